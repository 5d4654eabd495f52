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

``python -m lpft.vision.plot --runs DIR --out DIR [--baseline CSV]`` writes them and prints the paths. The
baseline CSV has columns ``model, id_acc, ood_acc`` and optionally ``ood_split`` (see :func:`load_baseline`).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from lpft.vision.io import atomic_path
from lpft.vision.robustness import (  # noqa: F401  (effective_robustness re-exported for callers of the plots)
    Baseline, LogitLine, baseline_line, effective_robustness, fit_logit_line, load_baseline, logit, sigmoid,
)
from lpft.vision.table import (
    Series,
    per_seed,
    aggregate,
    build_series,
    columns,
    final_records,
    load_records,
    ood_splits,
    select_lr,
)

COLORS = {"zeroshot": "tab:gray", "lp": "tab:blue", "ft": "tab:red", "lpft": "tab:green", "wiseft": "tab:purple"}
LOGIT_TICKS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def save_figure(fig: Figure, stem: str | os.PathLike) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``, atomically; return both paths."""
    out = []
    for ext in ("png", "pdf"):
        path = Path(f"{stem}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        out.append(path)
    return out


def _mean_ci(vals: dict[int, float]):
    a = aggregate(list(vals.values()))
    return a.mean, (a.ci or 0.0)


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


def _quantity(line: LogitLine, id_acc: float, ood_acc: float) -> str:
    """Legend text for one point: effective robustness (baseline) or residual (fit through the runs)."""
    name = "effective robustness" if line.source == "baseline" else "residual"
    return f"{name} {100 * line.residual(id_acc, ood_acc):+.1f} pp"


def _line_label(line: LogitLine) -> str:
    if line.source == "baseline":
        return f"baseline: logit-linear fit to {line.n} independent models"
    return f"logit-linear fit through these runs (n={line.n})"


def _draw_scatter(ax, group: Sequence[Series], split: str, oods: Sequence[str], logit_axes: bool,
                  baseline: Baseline | None = None) -> None:
    line = None
    if logit_axes:
        line = baseline_line(baseline, split) if baseline is not None else fit_through_runs(group, split)
    for s in group:
        lr_sel, _ = select_lr(s)
        color = COLORS.get(s.method, "black")
        if s.method == "wiseft":
            alphas = [a for a in s.alphas(lr_sel) if a is not None]
            xs, ys, shown = [], [], []
            for a in alphas:
                ix, ox = _points(s, lr_sel, a, split, oods)
                if ix:
                    xs.append(statistics.fmean(ix.values()))
                    ys.append(statistics.fmean(ox.values()))
                    shown.append(a)
            if xs:
                ls = "--" if s.bn_stats == "interpolated" else "-"
                label = f"{s.label} (α 0→1)"
                if line is not None and 0.5 in shown:
                    k = shown.index(0.5)
                    label += f", α=0.5: {_quantity(line, xs[k], ys[k])}"
                ax.plot(xs, ys, ls, color=color, marker=".", label=label)
                for a, x, y in zip(shown, xs, ys):
                    if a in (0.0, 0.5, 1.0):
                        ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(4, -8), fontsize=7)
            continue
        for lr in s.lrs:  # runs at the other learning rates, faint
            if lr != lr_sel:
                ix, ox = _points(s, lr, None, split, oods)
                ax.scatter(list(ix.values()), list(ox.values()), s=8, color=color, alpha=0.25, linewidths=0)
        ix, ox = _points(s, lr_sel, None, split, oods)
        if not ix:
            continue
        ax.scatter(list(ix.values()), list(ox.values()), s=10, color=color, alpha=0.4, linewidths=0)
        (mx, cx), (my, cy) = _mean_ci(ix), _mean_ci(ox)
        label = s.label + (f" ({_quantity(line, mx, my)})" if line is not None else "")
        ax.errorbar([mx], [my], xerr=[cx], yerr=[cy], fmt="o", color=color, ms=6, capsize=2, label=label)
    if logit_axes:
        if baseline is not None and baseline.for_split(split):
            pts = baseline.for_split(split)
            ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=12, marker="x", color="0.45", linewidths=0.8,
                       label=f"baseline models ({len(pts)})")
        for axis, setter in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
            setter("logit")
            axis.set_major_locator(FixedLocator(LOGIT_TICKS))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
            axis.set_minor_locator(NullLocator())
            axis.set_minor_formatter(NullFormatter())
        if line is not None:
            lo, hi = (float(logit(v)) for v in ax.get_xlim())
            grid = np.linspace(lo, hi, 50)
            ax.plot(sigmoid(grid), sigmoid(line.slope * grid + line.intercept), ":", color="black", lw=1,
                    label=_line_label(line))
        if baseline is not None:
            ax.set_title("effective robustness vs independent baseline" if line is not None
                         else "no baseline models for this split", fontsize=8)
        else:
            ax.set_title("residual from a logit-linear fit through these runs\n(no independent baseline)",
                         fontsize=8)
    else:
        lo = min(ax.get_xlim() + ax.get_ylim())
        hi = max(ax.get_xlim() + ax.get_ylim())
        ax.plot([lo, hi], [lo, hi], color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("ID accuracy (id_test)" + (", logit scale" if logit_axes else ""))
    ax.set_ylabel(f"OOD accuracy ({split})" + (", logit scale" if logit_axes else ""))
    ax.grid(alpha=0.3)


def scatter_figure(title: str, group: Sequence[Series], logit_axes: bool,
                   baseline: Baseline | None = None) -> Figure | None:
    """ID vs OOD accuracy, one panel per OOD column (``None`` without OOD columns).

    Args:
        title: the figure's title.
        group: the families of one (benchmark, backbone) (:func:`lpft.vision.table.build_series`).
        logit_axes: logit axes with a logit-linear line; each panel then has its own legend, since the
            effective robustness / residual of a method differs per split.
        baseline: independent standard models; with it the line is theirs and the legend gives effective
            robustness, without it the line goes through the runs and the legend gives residuals.
    """
    oods = ood_splits(group)
    panels = [c for c in columns(group) if c != "id_test"]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 4.0 + (0.6 if logit_axes else 0.0)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, split in zip(axes, panels):
        _draw_scatter(ax, group, split, oods, logit_axes, baseline)
    for ax in axes if logit_axes else axes[:1]:
        ax.legend(fontsize=6 if logit_axes else 7, loc="best")
    fig.suptitle(title)
    return fig


def _alpha_figure(title: str, group: Sequence[Series]) -> Figure | None:
    wise = [s for s in group if s.method == "wiseft"]
    if not wise:
        return None
    oods = ood_splits(group)
    fig = Figure(figsize=(5.0 * len(wise), 4.0), layout="constrained")
    axes = fig.subplots(1, len(wise), squeeze=False)[0]
    for ax, s in zip(axes, wise):
        lr = select_lr(s)[0]
        alphas = [a for a in s.alphas(lr) if a is not None]
        for c in columns(group):
            xs, ms, cs = [], [], []
            for a in alphas:
                v = per_seed(s, lr, a, c, oods)
                if v:
                    m, ci = _mean_ci(v)
                    xs.append(a), ms.append(m), cs.append(ci)
            if not xs:
                continue
            ms_a, cs_a = np.array(ms), np.array(cs)
            style = "-" if c == "id_test" else ("--" if c == "ood_avg" else ":")
            ax.plot(xs, ms_a, style, marker=".", label=c)
            ax.fill_between(xs, ms_a - cs_a, ms_a + cs_a, alpha=0.15)
        ax.axvline(0.5, color="0.7", lw=0.8)
        ax.set_xlabel("α  (0 = θ₀, 1 = fine-tuned)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{s.label}, lr {lr:g}" if lr is not None else s.label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _distortion_figure(title: str, records: Sequence[dict[str, Any]], group: Sequence[Series]) -> Figure | None:
    bench, bb = group[0].benchmark, group[0].backbone
    selected = {s.method: select_lr(s)[0] for s in group if s.bn_stats is None}
    metrics = [("feature_sq_change", "mean squared feature change"), ("feature_cosine", "mean cosine similarity")]
    data: dict[str, dict[str, dict[str, dict[int, float]]]] = {}  # metric -> method -> split -> seed -> value
    shifts: dict[str, str] = {}
    for metric, _ in metrics:
        for r in final_records(records, metric):
            if r["benchmark"] != bench or r["backbone"] != bb or r["method"] not in ("ft", "lpft"):
                continue
            lr = r.get("lr")
            if r["method"] in selected and lr != selected[r["method"]]:
                continue  # only the model at the learning rate the table reports
            per_split = data.setdefault(metric, {}).setdefault(r["method"], {})
            per_split.setdefault(r["eval_split"], {})[r["seed"]] = r["value"]
            shifts[r["eval_split"]] = r["shift"]
    if not data:
        return None
    splits = sorted(shifts, key=lambda s: (shifts[s] != "id", s))
    fig = Figure(figsize=(4.5 * len(data), 3.8), layout="constrained")
    axes = fig.subplots(1, len(data), squeeze=False)[0]
    for ax, (metric, label) in zip(axes, [m for m in metrics if m[0] in data]):
        methods = [m for m in ("ft", "lpft") if m in data[metric]]
        width = 0.8 / max(len(methods), 1)
        for j, m in enumerate(methods):
            xs, ms, cs = [], [], []
            for i, sp in enumerate(splits):
                v = data[metric][m].get(sp)
                if v:
                    mean, ci = _mean_ci(v)
                    xs.append(i + (j - (len(methods) - 1) / 2) * width), ms.append(mean), cs.append(ci)
            ax.bar(xs, ms, width, yerr=cs, capsize=2, color=COLORS[m], label=m)
        ax.set_xticks(range(len(splits)))
        ax.set_xticklabels([f"{s}\n({shifts[s].upper()})" for s in splits], fontsize=7)
        ax.set_ylabel(label)
        if metric == "feature_sq_change" and all(v > 0 for m in data[metric].values() for d in m.values()
                                                 for v in d.values()):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
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
            "acc_vs_alpha": _alpha_figure(title, group),
            "feature_distortion": _distortion_figure(title, records, group),
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
