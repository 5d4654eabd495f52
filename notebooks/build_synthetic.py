"""Build notebooks/synthetic.ipynb (outputs empty) with nbformat: `python notebooks/build_synthetic.py`.

The notebook only calls lpft.synthetic.figures; figures go to $LPFT_SYNTHETIC_FIGURES (default
figures/synthetic).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Two-layer linear theory of LP-FT and WiSE-FT\n\n"
        "Every figure is computed by `lpft.synthetic.figures` (gradient flow with DOP853 and the closed forms of "
        "THEORY.md). Figures are written as PNG and PDF into `$LPFT_SYNTHETIC_FIGURES` "
        "(default `figures/synthetic`)."
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


def build(path: Path) -> None:
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, str(path))


if __name__ == "__main__":
    build(Path(__file__).with_name("synthetic.ipynb"))
