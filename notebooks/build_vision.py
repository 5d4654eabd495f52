"""Build ``notebooks/vision.ipynb`` and store it executed: ``python notebooks/build_vision.py [--no-execute] [OUT]``.

The notebook only calls package functions: it reads every ``records.jsonl`` under ``$LPFT_RUNS`` (default
``runs/``), prints the comparison table next to the published numbers, writes it as markdown / LaTeX / CSV, draws
every figure of :mod:`lpft.vision.plot` and the papers' own figures with the runs overlaid
(:mod:`lpft.vision.paperfigs`) into ``$LPFT_FIGURES`` (default ``figures/vision``).

The stored copy is executed in a temporary folder on tiny smoke runs made by :func:`make_tiny_runs` (random-init
``tiny_cnn`` on 32 digits images, one epoch), so a code host shows what the notebook produces; those numbers are not
results. ``tests/vision/test_vision_notebook.py`` checks that the stored cells are the ones built here and executes a
copy on the same kind of runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# LP, FT, LP-FT and WiSE-FT: tables and figures from records\n\n"
        "Regenerates the paper-style comparison (Kumar et al. 2022, *Fine-Tuning can Distort Pretrained "
        "Features and Underperform OOD*; Wortsman et al. 2022, *Robust fine-tuning of zero-shot models*) "
        "from the `records.jsonl` files written by `python -m lpft.vision.run` / `python -m lpft.vision.sweep`.\n\n"
        "* `LPFT_RUNS`: runs directory (default `runs/`)\n"
        "* `LPFT_FIGURES`: output directory (default `figures/vision`)\n\n"
        "Learning rates are chosen by mean ID-validation accuracy over seeds; intervals are "
        "1.645·std/√n (90%), as in LP-FT. The same code backs `python -m lpft.vision.table`, "
        "`python -m lpft.vision.plot` and `python -m lpft.figures`.\n\n"
        "**The outputs stored in the repository** come from `python notebooks/build_vision.py`, which runs this "
        "notebook on tiny smoke runs (a randomly initialised `tiny_cnn` on 32 `digits` images, one epoch): they show "
        "what the notebook draws, not results. Run it on your own runs folder to replace them."
    ),
    new_code_cell(
        "import os\n"
        "from pathlib import Path\n\n"
        "from IPython.display import Image, Markdown, display\n\n"
        "from lpft.vision.io import write_text_atomic\n"
        "from lpft.vision.paperfigs import make_paper_figures\n"
        "from lpft.vision.plot import plot_runs\n"
        "from lpft.vision.table import build_table, format_table\n\n"
        "RUNS = Path(os.environ.get(\"LPFT_RUNS\", \"runs\"))\n"
        "FIGURES = Path(os.environ.get(\"LPFT_FIGURES\", \"figures/vision\"))\n"
        "print(f\"records from {RUNS}, figures into {FIGURES}\")"
    ),
    new_markdown_cell("## Comparison table (ours next to the published numbers)"),
    new_code_cell(
        "rows = build_table(RUNS)\n"
        "for fmt, ext in ((\"markdown\", \"md\"), (\"latex\", \"tex\"), (\"csv\", \"csv\")):\n"
        "    write_text_atomic(FIGURES / f\"table.{ext}\", format_table(rows, fmt))\n"
        "display(Markdown(format_table(rows, \"markdown\")))"
    ),
    new_markdown_cell(
        "## Figures\n\n"
        "ID vs OOD accuracy with the WiSE-FT curve, the same on logit axes with the baseline fit "
        "(residuals from a logit-linear fit through the runs; effective robustness needs an independent baseline: "
        "`plot_runs(..., baseline=CSV)`), accuracy vs α, and feature distortion of FT vs LP-FT."
    ),
    new_code_cell(
        "paths = plot_runs(RUNS, FIGURES)\n"
        "for p in paths:\n"
        "    print(p)\n"
        "for p in paths:\n"
        "    if p.suffix == \".png\":\n"
        "        display(Image(filename=str(p)))"
    ),
    new_markdown_cell(
        "## The papers' own figures, with these runs overlaid\n\n"
        "LP-FT's Tables 1-2 and WiSE-FT's ImageNet ID-vs-OOD view, drawn from the published numbers the package "
        "ships (`lpft/vision/published.json`). A run family measured on a published (benchmark, split, method[, α]) "
        "cell appears as a star at its mean over seeds; the runs that match no published cell are listed."
    ),
    new_code_cell(
        "paper = make_paper_figures(FIGURES, RUNS, dpi=100)\n"
        "for o in paper.overlaid:\n"
        "    print(\"overlaid on\", o)\n"
        "for o in paper.not_overlaid:\n"
        "    print(\"not overlaid:\", o)\n"
        "for pngs in paper.paths.values():\n"
        "    display(Image(filename=str(pngs[0])))"
    ),
]
#: environment variables the notebook reads; unset while the stored copy is executed, so it shows the defaults
ENV_VARS = ("LPFT_RUNS", "LPFT_FIGURES")
#: the smoke runs of the stored outputs and of the notebook test
TINY = ["--backbone", "tiny_cnn", "--epochs", "1", "--limit", "32", "--quiet"]


def notebook() -> nbformat.NotebookNode:
    """The notebook without outputs (stable cell ids, so rebuilding gives the same cells)."""
    nb = new_notebook(cells=[nbformat.from_dict(c) for c in CELLS])
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"vision-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def make_tiny_runs(out: str | os.PathLike) -> Path:
    """Real runs of the offline default (digits) with ``tiny_cnn``: LP, FT and LP-FT (2 seeds), WiSE-FT (alpha 0,
    0.5, 1), written under ``out``; returns ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lpft.vision.run import main as run_main

    out = Path(out)
    run_main(["--method", "lp", *TINY, "--out", str(out), "--seed", "0"])
    for seed in ("0", "1"):
        for method in ("ft", "lpft"):
            run_main(["--method", method, *TINY, "--out", str(out), "--seed", seed])
    run_main(["--method", "wiseft", *TINY, "--alphas", "0,0.5,1", "--out", str(out), "--seed", "0"])
    return out


def execute(nb: nbformat.NotebookNode, workdir: str | os.PathLike, timeout: int = 900) -> nbformat.NotebookNode:
    """Run ``nb`` in a fresh ``python3`` kernel with ``workdir`` as its working folder (in place; returned)."""
    import nbclient

    saved = {k: os.environ.pop(k) for k in (*ENV_VARS, "MPLBACKEND", "PYTHONWARNINGS") if k in os.environ}
    os.environ.update(MPLBACKEND="Agg", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
                      # tqdm.auto warns inside a kernel without ipywidgets (this environment, not the notebook)
                      PYTHONWARNINGS="ignore:IProgress not found")
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k in ("MPLBACKEND", "PYTHONWARNINGS"):
            os.environ.pop(k, None)
        os.environ.update(saved)
    return nb


def build(path: str | Path, run: bool = True) -> Path:
    """Write the notebook to ``path``, executed on :func:`make_tiny_runs` (in a temporary folder, as ``runs/``)
    unless ``run`` is false; return the path."""
    nb = notebook()
    if run:
        with tempfile.TemporaryDirectory(prefix="lpft-nb-") as tmp:
            make_tiny_runs(Path(tmp) / "runs")
            execute(nb, tmp)
    path = Path(path)
    from lpft.vision.io import write_text_atomic

    write_text_atomic(path, nbformat.writes(nb))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).with_name("vision.ipynb")))
    ap.add_argument("--no-execute", action="store_true", help="write the cells without outputs")
    a = ap.parse_args()
    print(build(a.out, run=not a.no_execute))
