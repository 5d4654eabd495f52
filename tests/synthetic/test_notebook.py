"""The synthetic notebook runs on a fresh kernel and writes every figure (PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lpft.synthetic.figures import FIGURES

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "synthetic.ipynb"


def test_notebook_writes_every_figure(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out = tmp_path / "figs"
    monkeypatch.setenv("LPFT_SYNTHETIC_FIGURES", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    for name in FIGURES:
        for ext in ("png", "pdf"):
            f = out / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 0, f"missing or empty figure {f}"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in FIGURES for e in ("png", "pdf"))
