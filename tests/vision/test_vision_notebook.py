"""notebooks/vision.ipynb runs in a fresh kernel on records made by the real runner (offline default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "vision.ipynb"
TINY = ["--backbone", "tiny_cnn", "--epochs", "1", "--limit", "32", "--quiet"]


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Real runs of the offline default (digits) with a tiny backbone: FT, LP-FT (2 seeds), LP, WiSE-FT."""
    from lpft.vision.run import main as run_main

    out = tmp_path_factory.mktemp("runs")
    run_main(["--method", "lp", *TINY, "--out", str(out), "--seed", "0"])
    for seed in ("0", "1"):
        for method in ("ft", "lpft"):
            run_main(["--method", method, *TINY, "--out", str(out), "--seed", seed])
    run_main(["--method", "wiseft", *TINY, "--alphas", "0,0.5,1", "--out", str(out), "--seed", "0"])
    return out


def test_notebook_is_the_built_one(tmp_path):
    """The committed notebook is what notebooks/build_vision.py writes, with empty outputs."""
    rebuilt = tmp_path / "vision.ipynb"
    subprocess.run([sys.executable, str(ROOT / "notebooks" / "build_vision.py"), str(rebuilt)], check=True,
                   capture_output=True)
    assert rebuilt.read_text() == NOTEBOOK.read_text()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_notebook_regenerates_table_and_figures(small_runs, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    monkeypatch.setenv("LPFT_RUNS", str(small_runs))
    monkeypatch.setenv("LPFT_FIGURES", str(figures))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    expected = [f"digits-tiny_cnn-{k}.{ext}" for k in ("id_vs_ood", "logit_residual", "acc_vs_alpha",
                                                        "feature_distortion") for ext in ("png", "pdf")]
    for name in expected + ["table.md", "table.tex", "table.csv"]:
        p = figures / name
        assert p.is_file() and p.stat().st_size > 0, name
    table = (figures / "table.md").read_text()
    assert "### digits / tiny_cnn" in table
    for label in ("| lp |", "| ft |", "| lpft |", "wiseft (BN recomputed) α=0.5", "oracle α"):
        assert label in table
    # the notebook displayed the table and every PNG it wrote
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("text/markdown" in o.get("data", {}) for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    assert not any(o.output_type == "error" for o in outputs)
