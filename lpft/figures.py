"""``python -m lpft.figures --out DIR [--runs RUNS_DIR] [--small] [--pdf]``: the package's figures as PNGs.

* ``theory-fig2_toy``: Kumar et al. (2022) Fig. 2, computed from the exact k = 1 limit
  (:func:`lpft.synthetic.figures.fig2_toy`);
* ``theory-ood_vs_eps``: OOD error vs feature quality eps for LP, FT, LP-FT with the FT lower bound
  (:func:`lpft.synthetic.figures.fig_ood_vs_eps`);
* ``paper-lpft_accuracy`` and ``paper-wiseft_id_vs_ood``: the papers' own vision results redrawn from the
  published numbers (:mod:`lpft.vision.paperfigs`), with the runs' means overlaid when ``--runs`` is given;
* with ``--runs``, per (benchmark, backbone) of the runs: ``runs-<bench>-<backbone>-id_vs_ood`` (ID vs OOD
  accuracy with the WiSE-FT curve) and ``runs-<bench>-<backbone>-feature_distortion`` (FT vs LP-FT), drawn by
  :mod:`lpft.vision.plot`. Without ``--runs`` they are skipped, and the command says so.

``--small`` uses a coarse eps grid (seconds, for tests); the default is the grid of the README figures.
Importing this module loads neither torch nor matplotlib; drawing does (the figure modules import them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FiguresReport", "make_figures", "main", "THEORY", "RUN_KINDS"]

#: theory figures: output name -> (lpft.synthetic.figures function, its file stem)
THEORY = {"theory-fig2_toy": ("fig2_toy", "fig2_toy"), "theory-ood_vs_eps": ("fig_ood_vs_eps", "ood_vs_eps")}
#: figures of lpft.vision.plot copied per (benchmark, backbone) of the runs
RUN_KINDS = ("id_vs_ood", "feature_distortion")
#: eps grids of theory-ood_vs_eps: (number of angles theta in [1e-3, 10^-0.3], gradient-flow horizon T)
EPS_GRID = {"small": (4, 50.0), "full": (13, 100.0)}


@dataclass
class FiguresReport:
    """What :func:`make_figures` did.

    Attributes:
        written: figure name -> written paths (PNG, and PDF with ``pdf=True``).
        skipped: figure name -> why it was not drawn.
        notes: other remarks (which runs were overlaid on the paper figures, which were not).
    """

    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as printed by the CLI."""
        out = [f"wrote {p}" for paths in self.written.values() for p in paths]
        out += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return out + self.notes


def _copy(src: Path, dst: Path) -> Path:
    from lpft.vision.io import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def _exts(pdf: bool) -> tuple[str, ...]:
    return ("png", "pdf") if pdf else ("png",)


def _theory(out: Path, tmp: Path, small: bool, pdf: bool, report: FiguresReport) -> None:
    import numpy as np

    from lpft.synthetic import figures as synth

    n, T = EPS_GRID["small" if small else "full"]
    kwargs = {"fig_ood_vs_eps": {"thetas": np.logspace(-3, -0.3, n), "T": T}}
    for name, (fn, stem) in THEORY.items():
        getattr(synth, fn)(tmp, **kwargs.get(fn, {}))  # the module writes PNG + PDF; keep what was asked for
        report.written[name] = [_copy(tmp / f"{stem}.{e}", out / f"{name}.{e}") for e in _exts(pdf)]


def _runs(out: Path, tmp: Path, records, pdf: bool, report: FiguresReport) -> None:
    from lpft.vision.plot import make_plots
    from lpft.vision.table import build_series

    groups = list(build_series(records))
    written = {p.name for p in make_plots(records, tmp)}
    for bench, bb in groups:
        for kind in RUN_KINDS:
            stem, name = f"{bench}-{bb}-{kind}", f"runs-{bench}-{bb}-{kind}"
            if f"{stem}.png" in written:
                report.written[name] = [_copy(tmp / f"{stem}.{e}", out / f"{name}.{e}") for e in _exts(pdf)]
            else:
                report.skipped[name] = ("the runs have no FT / LP-FT feature-distortion records"
                                        if kind == "feature_distortion" else "the runs have no id_test + OOD accuracy")


def make_figures(out_dir: str | os.PathLike, runs: str | os.PathLike | None = None, *, small: bool = False,
                 pdf: bool = False) -> FiguresReport:
    """Draw the theory figures, the papers' figures and, with ``runs``, the run figures into ``out_dir``.

    Args:
        out_dir: output folder (created).
        runs: a folder holding ``<run_id>/records.jsonl`` (as written by ``python -m lpft.vision.run``), or
            ``None``: the run figures are then skipped and the paper figures have no overlay.
        small: coarse settings (a 4-point eps grid, T = 50) that take seconds; default: the full grid.
        pdf: also write a PDF next to each PNG.

    Returns:
        :class:`FiguresReport`: written paths, skipped figures with the reason, overlay notes.

    Raises:
        FileNotFoundError: ``runs`` does not exist or holds no ``records.jsonl``.
        ValueError: malformed records, or seeds of one table cell run with different configs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = FiguresReport()
    records = None
    if runs is not None:
        from lpft.vision.table import load_records

        records = load_records(runs)  # fails before anything is drawn
    with tempfile.TemporaryDirectory(prefix="lpft-figures-") as t:
        tmp = Path(t)
        _theory(out, tmp / "theory", small, pdf, report)
        from lpft.vision.paperfigs import make_paper_figures

        paper = make_paper_figures(out, records, pdf=pdf)
        report.written.update(paper.paths)
        if records is None:
            report.notes.append("paper figures: published numbers only (no --runs, nothing overlaid)")
            for kind in RUN_KINDS:
                report.skipped[f"runs-*-{kind}"] = ("no --runs given (python -m lpft.figures --runs RUNS_DIR draws "
                                                    "it from the runs' records.jsonl)")
        else:
            report.notes += [f"overlaid on {o}" for o in paper.overlaid]
            report.notes += [f"not overlaid: {o}" for o in paper.not_overlaid]
            _runs(out, tmp / "runs", records, pdf, report)
    return report


def main(argv: list[str] | None = None) -> FiguresReport:
    """CLI entry point; prints one line per written or skipped figure (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m lpft.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder for the PNGs")
    ap.add_argument("--runs", default=None, metavar="RUNS_DIR",
                    help="runs folder (<run_id>/records.jsonl): adds the run figures and overlays the runs on the "
                         "paper figures; without it those are skipped")
    ap.add_argument("--small", action="store_true", help="coarse settings that take seconds (tests, smoke checks)")
    ap.add_argument("--pdf", action="store_true", help="also write a PDF next to each PNG")
    args = ap.parse_args(argv)
    try:
        report = make_figures(args.out, args.runs, small=args.small, pdf=args.pdf)
    except (FileNotFoundError, ValueError) as e:
        ap.exit(2, f"python -m lpft.figures: error: {e}\n")
    for line in report.lines():
        print(line)
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
