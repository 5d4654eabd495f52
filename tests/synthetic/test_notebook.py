"""notebooks/synthetic.ipynb: stored executed with the built cells, and a copy runs on a fresh kernel writing every
figure (PNG and PDF)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from lpft.synthetic.figures import FIGURES

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "synthetic.ipynb"
MAX_BYTES = 2_000_000


def _builder():
    spec = importlib.util.spec_from_file_location("build_synthetic", ROOT / "notebooks" / "build_synthetic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _code_outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_stored_notebook_is_the_built_one_with_outputs():
    """Same cells (type, id, source) as notebooks/build_synthetic.py builds; stored executed, without errors, with
    every figure visible, and small."""
    stored = nbformat.read(str(NOTEBOOK), as_version=4)
    built = _builder().notebook()
    assert [(c.cell_type, c.get("id"), c.source) for c in stored.cells] == \
        [(c.cell_type, c.get("id"), c.source) for c in built.cells], "rerun python notebooks/build_synthetic.py"
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "the stored notebook is not executed"
    outputs = _code_outputs(stored)
    assert not any(o.output_type == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(FIGURES)
    assert NOTEBOOK.stat().st_size < MAX_BYTES


def test_notebook_writes_every_figure(tmp_path, monkeypatch):
    out = tmp_path / "figs"
    monkeypatch.setenv("LPFT_SYNTHETIC_FIGURES", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = NOTEBOOK.read_bytes()
    nb = copy.deepcopy(nbformat.read(str(NOTEBOOK), as_version=4))
    for c in nb.cells:  # the checks below must see this run's outputs, not the stored ones
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    for name in FIGURES:
        for ext in ("png", "pdf"):
            f = out / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 0, f"missing or empty figure {f}"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in FIGURES for e in ("png", "pdf"))
    outputs = _code_outputs(nb)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(FIGURES)
    assert not any(o.output_type == "error" for o in outputs)
    assert NOTEBOOK.read_bytes() == before  # the run worked on a copy
