"""Build ``notebooks/synthetic.ipynb`` and store it executed: ``python notebooks/build_synthetic.py [OUT]``.

The notebook only calls :mod:`lpft.synthetic.figures`; figures go to ``$LPFT_SYNTHETIC_FIGURES`` (default
``figures/synthetic``). The stored copy keeps its outputs (the figures as PNG), so a code host shows them; it is
executed in a temporary folder, so no figure lands in the repository. ``tests/synthetic/test_notebook.py`` checks
that the stored cells are the ones built here and executes a copy.
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
        "# Two-layer linear theory of LP-FT and WiSE-FT\n\n"
        "Every figure is computed by `lpft.synthetic.figures` (gradient flow with DOP853 and the closed forms of "
        "`docs/theory.md`). Figures are written as PNG and PDF into `$LPFT_SYNTHETIC_FIGURES` "
        "(default `figures/synthetic`). The outputs stored in the repository were made by "
        "`python notebooks/build_synthetic.py`."
    ),
    new_code_cell(
        "import os\n"
        "from IPython.display import Image, display\n"
        "from lpft.synthetic import figures\n\n"
        "OUT = os.environ.get('LPFT_SYNTHETIC_FIGURES', 'figures/synthetic')\n"
        "paths = {}"
    ),
    new_markdown_cell("## Fig. 2 of Kumar et al. (2022), computed from the exact k = 1 FT limit"),
    new_code_cell("paths['fig2_toy'] = figures.fig2_toy(OUT)\ndisplay(Image(str(paths['fig2_toy'][0])))"),
    new_markdown_cell("## OOD error vs feature quality eps: LP, FT (two head scales), LP-FT, FT lower bound"),
    new_code_cell("paths['ood_vs_eps'] = figures.fig_ood_vs_eps(OUT)\ndisplay(Image(str(paths['ood_vs_eps'][0])))"),
    new_markdown_cell("## ID and OOD loss along FT and LP-FT: early stopping never reaches LP"),
    new_code_cell(
        "paths['loss_trajectories'] = figures.fig_loss_trajectories(OUT)\n"
        "display(Image(str(paths['loss_trajectories'][0])))"
    ),
    new_markdown_cell("## Feature change inside S vs on S-perp"),
    new_code_cell(
        "paths['feature_change'] = figures.fig_feature_change(OUT)\ndisplay(Image(str(paths['feature_change'][0])))"
    ),
    new_markdown_cell("## WiSE-FT: weight-space vs output-space interpolation"),
    new_code_cell("paths['wise_curves'] = figures.fig_wise_curves(OUT)\ndisplay(Image(str(paths['wise_curves'][0])))"),
    new_markdown_cell("## Gradient descent: drift of the conserved quantity vs step size"),
    new_code_cell("paths['gd_drift'] = figures.fig_gd_drift(OUT)\ndisplay(Image(str(paths['gd_drift'][0])))"),
    new_code_cell("for name, (png, pdf) in paths.items():\n    print(name, png, pdf)"),
]
#: environment variables the notebook reads; unset while the stored copy is executed, so it shows the defaults
ENV_VARS = ("LPFT_SYNTHETIC_FIGURES",)


def notebook() -> nbformat.NotebookNode:
    """The notebook without outputs (stable cell ids, so rebuilding gives the same cells)."""
    nb = new_notebook(cells=[nbformat.from_dict(c) for c in CELLS])
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"synthetic-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def execute(nb: nbformat.NotebookNode, workdir: str | os.PathLike, timeout: int = 900) -> nbformat.NotebookNode:
    """Run ``nb`` in a fresh ``python3`` kernel with ``workdir`` as its working folder (in place; returned)."""
    import nbclient

    saved = {k: os.environ.pop(k) for k in (*ENV_VARS, "MPLBACKEND", "PYTHONWARNINGS") if k in os.environ}
    os.environ["MPLBACKEND"] = "Agg"
    # tqdm.auto warns inside a kernel without ipywidgets (a property of this environment, not of the notebook)
    os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k in ("MPLBACKEND", "PYTHONWARNINGS"):
            os.environ.pop(k, None)
        os.environ.update(saved)
    return nb


def build(path: str | Path, run: bool = True) -> Path:
    """Write the notebook to ``path``, executed (outputs stored) unless ``run`` is false; return the path."""
    nb = notebook()
    if run:
        with tempfile.TemporaryDirectory(prefix="lpft-nb-") as tmp:
            execute(nb, tmp)
    path = Path(path)
    from lpft.vision.io import write_text_atomic

    write_text_atomic(path, nbformat.writes(nb))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).with_name("synthetic.ipynb")))
    ap.add_argument("--no-execute", action="store_true", help="write the cells without outputs")
    a = ap.parse_args()
    print(build(a.out, run=not a.no_execute))
