"""notebooks/vision.ipynb: stored executed with the built cells, and a copy runs in a fresh kernel on records made by
the real runner (offline default, tiny backbone)."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "vision.ipynb"
MAX_BYTES = 2_000_000
RUN_FIGURES = ("id_vs_ood", "logit_residual", "acc_vs_alpha", "feature_distortion")
PAPER_FIGURES = ("paper-lpft_accuracy", "paper-wiseft_id_vs_ood")


def _builder():
    spec = importlib.util.spec_from_file_location("build_vision", ROOT / "notebooks" / "build_vision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """The same smoke runs as the stored outputs: LP, FT and LP-FT (2 seeds), WiSE-FT, digits / tiny_cnn."""
    return _builder().make_tiny_runs(tmp_path_factory.mktemp("runs"))


def test_stored_notebook_is_the_built_one_with_outputs():
    """Same cells (type, id, source) as notebooks/build_vision.py builds; stored executed, without errors, showing the
    table and every figure, and small."""
    stored = nbformat.read(NOTEBOOK, as_version=4)
    built = _builder().notebook()
    assert [(c.cell_type, c.get("id"), c.source) for c in stored.cells] == \
        [(c.cell_type, c.get("id"), c.source) for c in built.cells], "rerun python notebooks/build_vision.py"
    assert all(c.execution_count is not None for c in stored.cells if c.cell_type == "code")
    outputs = _outputs(stored)
    assert not any(o.output_type == "error" for o in outputs)
    assert any("text/markdown" in o.get("data", {}) for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(RUN_FIGURES) + len(PAPER_FIGURES)
    text = "".join(o.get("text", "") for o in outputs)
    assert "figures/vision/digits-tiny_cnn-id_vs_ood.png" in text and "/tmp" not in text  # no machine paths
    assert NOTEBOOK.stat().st_size < MAX_BYTES


def test_notebook_regenerates_table_and_figures(small_runs, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    monkeypatch.setenv("LPFT_RUNS", str(small_runs))
    monkeypatch.setenv("LPFT_FIGURES", str(figures))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = NOTEBOOK.read_bytes()
    nb = copy.deepcopy(nbformat.read(NOTEBOOK, as_version=4))
    for c in nb.cells:  # the checks below must see this run's outputs, not the stored ones
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    expected = [f"digits-tiny_cnn-{k}.{ext}" for k in RUN_FIGURES for ext in ("png", "pdf")]
    expected += [f"{k}.png" for k in PAPER_FIGURES]
    for name in expected + ["table.md", "table.tex", "table.csv"]:
        p = figures / name
        assert p.is_file() and p.stat().st_size > 0, name
    table = (figures / "table.md").read_text()
    assert "### digits / tiny_cnn" in table
    for label in ("| lp |", "| ft |", "| lpft |", "wiseft (BN recomputed) α=0.5", "oracle α"):
        assert label in table
    # the notebook displayed the table and every PNG it wrote, and said the runs match no published cell
    outputs = _outputs(nb)
    assert any("text/markdown" in o.get("data", {}) for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(RUN_FIGURES) + len(PAPER_FIGURES)
    assert not any(o.output_type == "error" for o in outputs)
    assert "not overlaid: digits/tiny_cnn" in "".join(o.get("text", "") for o in outputs)
    assert NOTEBOOK.read_bytes() == before  # the run worked on a copy
