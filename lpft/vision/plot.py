"""Figures from ``records.jsonl`` only (matplotlib, PNG and PDF, no pyplot global state).

For each (benchmark, backbone) found under the runs directory:

* ``<bench>-<backbone>-id_vs_ood``: ID (``id_test``) vs OOD accuracy per OOD split (and their average),
  each method at its ID-val-selected learning rate (mean +- 90% interval over seeds, seeds faint), and
  the WiSE-FT curve over alpha (Wortsman et al. 2022, Fig. 1);
* with ``--baseline CSV``: ``<bench>-<backbone>-effective_robustness``, the same on logit axes with the
  logit-linear fit ``logit(ood) = slope * logit(id) + intercept`` through an **independent** set of standard
  models (the CSV), and each method's effective robustness = its OOD accuracy minus that line's prediction at
  its ID accuracy (Taori et al. 2020, "Measuring Robustness to Natural Distribution Shifts"; used by WiSE-FT);
* without ``--baseline``: ``<bench>-<backbone>-logit_residual``, the same logit axes with a logit-linear fit
  through the zero-shot / LP / FT / LP-FT runs themselves, and each method's residual from that fit. This is
  **not** effective robustness: a least-squares line through the judged points makes their residuals cancel
  on average, and a robust point tilts the line towards itself, so it is labelled as a residual everywhere;
* ``<bench>-<backbone>-acc_vs_alpha``: accuracy vs the WiSE-FT mixing coefficient;
* ``<bench>-<backbone>-feature_distortion``: feature change from the pretrained backbone (mean squared
  change and cosine similarity) for FT vs LP-FT on ID and OOD splits (Kumar et al. 2022, Sec. 4.3).
  (These two are drawn by :mod:`lpft.vision.plotpanels`.)

A figure may hold many families (fine-tuning options, soups, WiSE-FT sources, BN statistics): each has its own
colour and marker, a shade of its method's colour (:mod:`lpft.vision.plotstyle`), the same in every figure; the
legend sits under the panels, never over data; the scatter panels' limits hold their points with a margin (the
``y = x`` diagonal is drawn where it crosses them); WiSE-FT curves are labelled at alpha 0, 0.5 and 1 only,
placed off each other. Logit axes have no 0% or 100%: such seeds are drawn just beyond the other points, and the
axis label says where.

``python -m lpft.vision.plot --runs DIR --out DIR [--baseline CSV]`` writes them and prints the paths. The
baseline CSV has columns ``model, id_acc, ood_acc`` and optionally ``ood_split`` (see :func:`load_baseline`).
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from lpft.vision.io import atomic_path
from lpft.vision.robustness import (  # noqa: F401  (effective_robustness re-exported for callers of the plots)
    Baseline, LogitLine, baseline_line, effective_robustness, fit_logit_line, load_baseline, logit, sigmoid,
)
from lpft.vision.plotpanels import alpha_figure, distortion_figure, mean_ci
from lpft.vision.plotstyle import (  # noqa: F401  (COLORS re-exported: lpft.vision.lab.report draws with it)
    COLORS, REFERENCE, family_key, family_label, family_styles, fit_limits, legend_below, logit_ticks, place_labels,
)
from lpft.vision.table import Series, build_series, columns, load_records, ood_splits, per_seed, select_lr


def save_figure(fig: Figure, stem: str | os.PathLike) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``, atomically; return both paths."""
    out = []
    for ext in ("png", "pdf"):
        path = Path(f"{stem}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        out.append(path)
    return out


def _points(s: Series, lr, alpha, split: str, oods: Sequence[str]):
    """(seeds' ID values, seeds' values on ``split``) for seeds having both."""
    idv = per_seed(s, lr, alpha, "id_test", oods)
    ov = per_seed(s, lr, alpha, split, oods)
    seeds = sorted(set(idv) & set(ov))
    return {k: idv[k] for k in seeds}, {k: ov[k] for k in seeds}


def fit_through_runs(group: Sequence[Series], split: str) -> LogitLine | None:
    """Logit-linear fit through the runs themselves: every zero-shot, LP, FT and LP-FT run (all learning rates
    and seeds; not WiSE-FT's interpolations). Residuals from it are not effective robustness (module docstring).

    Returns ``None`` with fewer than 3 points or a single ID accuracy.
    """
    oods = ood_splits(group)
    xs, ys = [], []
    for s in group:
        if s.method == "wiseft":
            continue
        for lr in s.lrs:
            ix, ox = _points(s, lr, None, split, oods)
            xs += list(ix.values())
            ys += list(ox.values())
    if len(xs) < 3 or len({round(x, 9) for x in xs}) < 2:
        return None
    return fit_logit_line(xs, ys, "runs")


def _line_label(line: LogitLine) -> str:
    if line.source == "baseline":
        return f"baseline: logit-linear fit to {line.n} independent models"
    return f"logit-linear fit through these runs (n={line.n})"


def _logit_clip(vals: Sequence[float]) -> tuple[float, float]:
    """Where a logit axis draws 0% and 100% (it has neither): one step beyond the values strictly inside (0, 1),
    so that a seed at 100% neither vanishes nor stretches the axis to 99.99%."""
    inner = [v for v in vals if 0 < v < 1]
    if not inner:
        return 1e-4, 1 - 1e-4
    z = logit(inner)
    step = max(0.15 * float(z.max() - z.min()), 0.3)
    return float(sigmoid(z.min() - step)), float(sigmoid(z.max() + step))


def _panel_values(group: Sequence[Series], split: str, oods: Sequence[str], baseline: Baseline | None):
    """Every ID and ``split`` accuracy the panel can show (all learning rates, alphas and seeds)."""
    xs, ys = [], []
    for s in group:
        for lr in s.lrs:
            for a in s.alphas(lr):
                ix, ox = _points(s, lr, a, split, oods)
                xs += list(ix.values())
                ys += list(ox.values())
    if baseline is not None:
        xs += [p[1] for p in baseline.for_split(split)]
        ys += [p[2] for p in baseline.for_split(split)]
    return xs, ys


@dataclass
class _Panel:
    """What one panel drew: every data point (for the limits), the marked points (means, WiSE-FT's alphas) that
    labels must not cover, the alpha labels to place, and each family's residual on this panel's split."""

    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    marks: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    residual: dict = field(default_factory=dict)
    families: set = field(default_factory=set)
    clip: tuple = ((0.0, 1.0), (0.0, 1.0))  # (x, y): where accuracies are cut (logit axes: 0% and 100% drawn)
    clipped: list = field(default_factory=lambda: [set(), set()])  # (x, y): "0%" / "100%" drawn at the clip


def _draw_scatter(ax, group: Sequence[Series], styles: dict, split: str, oods: Sequence[str], logit_axes: bool,
                  line: LogitLine | None, baseline: Baseline | None) -> _Panel:
    out = _Panel()
    if logit_axes:
        out.clip = tuple(_logit_clip(v) for v in _panel_values(group, split, oods, baseline))
    (xlo, xhi), (ylo, yhi) = out.clip

    def add(xs, ys, ends=False):
        if logit_axes and not ends:
            for seen, vals in zip(out.clipped, (xs, ys)):
                seen.update(("0%" if v <= 0 else "100%") for v in vals if not 0 < v < 1)
        xs, ys = list(np.clip(xs, xlo, xhi)), list(np.clip(ys, ylo, yhi))
        out.xs.extend(xs), out.ys.extend(ys)
        return xs, ys

    for s in group:
        lr_sel, _ = select_lr(s)
        st = styles[family_key(s)]
        if s.method == "wiseft":
            xs, ys, shown = [], [], []
            for a in (a for a in s.alphas(lr_sel) if a is not None):
                ix, ox = _points(s, lr_sel, a, split, oods)
                if ix:
                    xs.append(statistics.fmean(ix.values())), ys.append(statistics.fmean(ox.values()))
                    shown.append(a)
            if xs:
                if line is not None and 0.5 in shown:  # from the accuracies, not from where they are drawn
                    k = shown.index(0.5)
                    out.residual[family_key(s)] = line.residual(xs[k], ys[k])
                xs, ys = add(xs, ys)
                ax.plot(xs, ys, st.linestyle, color=st.color, marker=st.marker, ms=4)
                out.families.add(family_key(s))
                out.marks += list(zip(xs, ys))
                out.labels += [(x, y, f"α={a:g}", st.color) for a, x, y in zip(shown, xs, ys) if a in (0.0, 0.5, 1.0)]
            continue
        for lr in s.lrs:  # runs at the other learning rates, faint
            if lr != lr_sel:
                ix, ox = _points(s, lr, None, split, oods)
                if ix:
                    ax.scatter(*add(list(ix.values()), list(ox.values())), s=10, marker=st.marker, color=st.color,
                               alpha=0.25, linewidths=0)
        ix, ox = _points(s, lr_sel, None, split, oods)
        if not ix:
            continue
        ax.scatter(*add(list(ix.values()), list(ox.values())), s=12, marker=st.marker, color=st.color, alpha=0.4,
                   linewidths=0)
        (mx, cx), (my, cy) = mean_ci(ix), mean_ci(ox)
        if line is not None:
            out.residual[family_key(s)] = line.residual(mx, my)
        # the 90% interval, cut at what an accuracy can be (and what the axis can show)
        (x0, x1), (y0, y1) = add([mx - cx, mx + cx], [my - cy, my + cy], ends=True)
        (mx,), (my,) = add([mx], [my])
        ax.errorbar([mx], [my], xerr=[[mx - x0], [x1 - mx]], yerr=[[my - y0], [y1 - my]], fmt=st.marker,
                    color=st.color, ms=6, capsize=2)
        out.marks.append((mx, my))
        out.families.add(family_key(s))
    if logit_axes and baseline is not None and baseline.for_split(split):
        pts = baseline.for_split(split)
        ax.scatter(*add([p[1] for p in pts], [p[2] for p in pts]), s=12, marker="x", color="0.45", linewidths=0.8)
    return out


def _finish_axes(ax, panel: _Panel, split: str, logit_axes: bool, line: LogitLine | None,
                 baseline: Baseline | None, refs: dict) -> None:
    """Limits around the panel's points, logit ticks, the guide lines (added to ``refs``: label -> handle)."""
    if logit_axes:
        ax.set_xscale("logit")
        ax.set_yscale("logit")
    lims = fit_limits(panel.xs, panel.ys, logit_axes)
    if lims is not None:
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
    if logit_axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            axis.set_major_locator(FixedLocator(logit_ticks(*lim)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}%"))
            axis.set_minor_locator(NullLocator())
            axis.set_minor_formatter(NullFormatter())
        if baseline is not None and baseline.for_split(split):
            n = len(baseline.for_split(split))
            refs.setdefault(f"baseline models ({n})", Line2D([], [], ls="none", marker="x", color="0.45"))
        if line is not None:
            grid = np.linspace(*(float(logit(v)) for v in ax.get_xlim()), 50)
            (h,) = ax.plot(sigmoid(grid), sigmoid(line.slope * grid + line.intercept), ":", color="black", lw=1,
                           gid=REFERENCE)
            refs.setdefault(_line_label(line), h)
        if baseline is not None:
            ax.set_title("effective robustness vs independent baseline" if line is not None
                         else "no baseline models for this split", fontsize=8)
        else:
            ax.set_title("residual from a logit-linear fit through these runs\n(no independent baseline)",
                         fontsize=8)
    elif lims is not None:  # y = x where it crosses the shown square
        lo, hi = max(lims[0][0], lims[1][0]), min(lims[0][1], lims[1][1])
        if lo < hi:
            ax.plot([lo, hi], [lo, hi], color="0.8", lw=0.8, zorder=0, gid=REFERENCE)
    notes = []
    for name, clipped, (lo, hi) in zip(("ID", "OOD"), panel.clipped, panel.clip):
        for end, at in (("0%", f"{100 * lo:.3g}%"), ("100%", f"{100 * hi:.4g}%")):
            if end in clipped:
                notes.append(f"{name} {end} drawn at {at}")
    ax.set_xlabel("ID accuracy (id_test)" + (", logit scale" if logit_axes else "")
                  + ("\n" + "; ".join(notes) if notes else ""))
    ax.set_ylabel(f"OOD accuracy ({split})" + (", logit scale" if logit_axes else ""))
    ax.grid(alpha=0.3)


def _legend_label(s: Series, group: Sequence[Series], residual: dict[str, float], name: str, n_panels: int) -> str:
    """The family's label, plus its residual / effective robustness on each split (WiSE-FT: at alpha 0.5)."""
    label = family_label(s, group) + (" (α 0→1)" if s.method == "wiseft" else "")
    if not residual:
        return label
    if n_panels == 1:
        body = f"{name} {100 * next(iter(residual.values())):+.1f} pp"
    else:
        body = f"{name}: " + ", ".join(f"{sp} {100 * v:+.1f}" for sp, v in residual.items()) + " pp"
    return f"{label}, α=0.5: {body}" if s.method == "wiseft" else f"{label} ({body})"


def scatter_figure(title: str, group: Sequence[Series], logit_axes: bool,
                   baseline: Baseline | None = None) -> Figure | None:
    """ID vs OOD accuracy, one panel per OOD column (``None`` without OOD columns).

    Every family has its own colour and marker (:func:`lpft.vision.plotstyle.family_styles`); one legend under
    the panels names them. Each panel's limits hold its points with a margin; WiSE-FT curves are labelled at
    alpha 0, 0.5 and 1, placed off each other.

    Args:
        title: the figure's title.
        group: the families of one (benchmark, backbone) (:func:`lpft.vision.table.build_series`).
        logit_axes: logit axes with a logit-linear line per panel; the legend then gives each family's
            effective robustness / residual per split.
        baseline: independent standard models; with it the line is theirs and the legend gives effective
            robustness, without it the line goes through the runs and the legend gives residuals.
    """
    oods = ood_splits(group)
    panels = [c for c in columns(group) if c != "id_test"]
    if not panels:
        return None
    styles = family_styles(group)
    side = 4.2 if len(group) <= 8 else 5.2  # many families: larger panels
    fig = Figure(figsize=(side * len(panels), side - 0.2 + (0.6 if logit_axes else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure the alpha labels with
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    residuals: dict[tuple, dict[str, float]] = {}  # family -> split -> residual / effective robustness
    refs: dict[str, Any] = {}
    done: list[tuple[Any, _Panel]] = []
    name = "effective robustness" if baseline is not None else "residual"
    for ax, split in zip(axes, panels):
        line = None
        if logit_axes:
            line = baseline_line(baseline, split) if baseline is not None else fit_through_runs(group, split)
        panel = _draw_scatter(ax, group, styles, split, oods, logit_axes, line, baseline)
        _finish_axes(ax, panel, split, logit_axes, line, baseline, refs)
        for key, v in panel.residual.items():
            residuals.setdefault(key, {})[split] = v
        done.append((ax, panel))
    handles, labels = [], []
    plotted = {k for _, p in done for k in p.families}
    for s in group:
        key = family_key(s)
        if key not in plotted:
            continue
        st = styles[key]
        curve = s.method == "wiseft"
        handles.append(Line2D([], [], color=st.color, marker=st.marker, ls=st.linestyle if curve else "none",
                              ms=4 if curve else 6))
        labels.append(_legend_label(s, group, residuals.get(key, {}), name, len(panels)))
    legend_below(fig, handles + list(refs.values()), labels + list(refs), fontsize=7)
    fig.suptitle(title)
    fig.draw_without_rendering()  # constrained layout settles the axes before the labels are placed
    renderer = fig.canvas.get_renderer()
    for ax, panel in done:
        place_labels(ax, panel.labels, renderer, avoid=panel.marks)
    return fig


def _check_baseline_splits(baseline: Baseline, groups: dict) -> None:
    panels = sorted({c for g in groups.values() for c in columns(g) if c != "id_test"})
    unknown = [sp for sp in baseline.splits if sp not in panels]
    if unknown:
        raise ValueError(f"{baseline.path}: ood_split {unknown} matches no OOD column of the runs; the runs have "
                         f"{panels}")


def make_plots(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike,
               baseline: Baseline | str | os.PathLike | None = None) -> list[Path]:
    """Write every figure the records support into ``out_dir``; return the written paths (PNG and PDF).

    Args:
        records: records as read by :func:`lpft.vision.table.load_records`.
        out_dir: where the figures go.
        baseline: a :class:`~lpft.vision.robustness.Baseline` or the path of its CSV. With it the logit-axes
            figure is ``effective_robustness``; without it, ``logit_residual`` (see the module docstring).

    Raises:
        ValueError: a bad baseline CSV, or one naming an OOD split that no run has.
    """
    if baseline is not None and not isinstance(baseline, Baseline):
        baseline = load_baseline(baseline)
    out_dir = Path(out_dir)
    written: list[Path] = []
    groups = build_series(records)
    if baseline is not None:
        _check_baseline_splits(baseline, groups)
    logit_name = "logit_residual" if baseline is None else "effective_robustness"
    for (bench, bb), group in groups.items():
        title = f"{bench} / {bb}"
        stem = out_dir / f"{bench}-{bb}"
        figs = {
            "id_vs_ood": scatter_figure(title, group, logit_axes=False),
            logit_name: scatter_figure(title + " (logit axes)", group, logit_axes=True, baseline=baseline),
            "acc_vs_alpha": alpha_figure(title, group),
            "feature_distortion": distortion_figure(title, records, group),
        }
        for name, fig in figs.items():
            if fig is not None:
                written += save_figure(fig, f"{stem}-{name}")
    return written


def plot_runs(runs: str | os.PathLike, out_dir: str | os.PathLike,
              baseline: Baseline | str | os.PathLike | None = None) -> list[Path]:
    """Read every ``records.jsonl`` under ``runs`` and write the figures into ``out_dir`` (see :func:`make_plots`)."""
    if baseline is not None and not isinstance(baseline, Baseline):
        baseline = load_baseline(baseline)  # a bad CSV fails before any record is read
    return make_plots(load_records(runs), out_dir, baseline)


def main(argv: list[str] | None = None) -> list[Path]:
    """CLI: ``python -m lpft.vision.plot --runs DIR --out DIR [--baseline CSV]``; prints each written path."""
    ap = argparse.ArgumentParser(prog="python -m lpft.vision.plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs", help="directory holding <run_id>/records.jsonl")
    ap.add_argument("--out", default="figures/vision", help="where to write the figures")
    ap.add_argument("--baseline", default=None, metavar="CSV",
                    help="independent standard models (columns model, id_acc, ood_acc[, ood_split]; accuracies in "
                         "%% or [0, 1]): the logit-axes figure then shows effective robustness against them; "
                         "without it, residuals from a fit through the runs themselves")
    args = ap.parse_args(argv)
    paths = plot_runs(args.runs, args.out, args.baseline)
    if not paths:
        print(f"no figure: the records under {args.runs} have no id_test + OOD accuracies")
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
