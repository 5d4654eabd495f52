"""The per-run figures beside the ID-vs-OOD scatter (:mod:`lpft.vision.plot`): accuracy vs WiSE-FT's alpha, one
panel per WiSE-FT family, and feature distortion, one bar per FT / LP-FT family (options included) and split.

Both draw each family in its :func:`lpft.vision.plotstyle.family_styles` colour (the same as in the scatter
figures) and put their legend under the panels (:func:`lpft.vision.plotstyle.legend_below`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lpft.vision.plotstyle import family_key, family_label, family_styles, legend_below, wrap_label
from lpft.vision.table import Series, record_family, aggregate, columns, final_records, ood_splits, per_seed, select_lr

__all__ = ["alpha_figure", "distortion_figure", "mean_ci"]

DISTORTION_METHODS = ("ft", "lpft")  # Kumar et al. 2022, Sec. 4.3 compares these two


def mean_ci(vals: dict[int, float]) -> tuple[float, float]:
    """``(mean, 90% half-interval)`` over seeds (:func:`lpft.vision.table.aggregate`; 0 for one seed)."""
    a = aggregate(list(vals.values()))
    return a.mean, (a.ci or 0.0)


def _grid(fig: Figure, n: int, most: int = 3):
    """``n`` axes in rows of at most ``most``; the unused cells of the last row are removed."""
    ncols = min(n, most)
    axes = list(fig.subplots(math.ceil(n / ncols), ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.remove()
    return axes[:n]


def alpha_figure(title: str, group: Sequence[Series]) -> Figure | None:
    """Accuracy (mean +- 90% interval over seeds) vs alpha for every WiSE-FT family at its selected learning rate,
    one panel per family (rows of 3), one line per column (ID solid, OOD dotted, OOD average dashed), a legend
    of the columns under the panels; ``None`` without WiSE-FT."""
    wise = [s for s in group if s.method == "wiseft"]
    if not wise:
        return None
    oods = ood_splits(group)
    cols = columns(group)
    ncols = min(len(wise), 3)
    fig = Figure(figsize=(5.0 * ncols, 4.0 * math.ceil(len(wise) / ncols)), layout="constrained")
    handles: dict[str, Any] = {}
    for ax, s in zip(_grid(fig, len(wise)), wise):
        lr = select_lr(s)[0]
        alphas = [a for a in s.alphas(lr) if a is not None]
        for k, c in enumerate(cols):
            xs, ms, cs = [], [], []
            for a in alphas:
                v = per_seed(s, lr, a, c, oods)
                if v:
                    m, ci = mean_ci(v)
                    xs.append(a), ms.append(m), cs.append(ci)
            if not xs:
                continue
            ms_a, cs_a = np.array(ms), np.array(cs)
            style = "-" if c == "id_test" else ("--" if c == "ood_avg" else ":")
            (h,) = ax.plot(xs, ms_a, style, marker=".", color=f"C{k}")  # one colour per column in every panel
            ax.fill_between(xs, ms_a - cs_a, ms_a + cs_a, alpha=0.15, color=f"C{k}")
            handles.setdefault(c, h)
        ax.axvline(0.5, color="0.7", lw=0.8)
        ax.set_xlabel("α  (0 = θ₀, 1 = fine-tuned)")
        ax.set_ylabel("accuracy")
        head = family_label(s, group) + (f", lr {lr:g}" if lr is not None else "")
        ax.set_title(wrap_label(head, 60), fontsize=9)
        ax.grid(alpha=0.3)
    legend_below(fig, list(handles.values()), list(handles), fontsize=8)
    fig.suptitle(title)
    return fig


def _distortion_data(records: Sequence[dict[str, Any]], group: Sequence[Series], metric: str):
    """``{family_key: {split: {seed: value}}}`` of the FT / LP-FT families at their selected learning rates,
    and ``{split: shift}``."""
    bench, bb = group[0].benchmark, group[0].backbone
    selected = {family_key(s): select_lr(s)[0] for s in group if s.method in DISTORTION_METHODS}
    data: dict[tuple, dict[str, dict[int, float]]] = {}
    shifts: dict[str, str] = {}
    for r in final_records(records, metric):
        if r["benchmark"] != bench or r["backbone"] != bb or r["method"] not in DISTORTION_METHODS:
            continue
        key = family_key(Series(*record_family(r)))  # the family build_series puts the record in
        if key not in selected or r.get("lr") != selected[key]:
            continue  # only the model at the learning rate the table reports (a family without accuracy has none)
        data.setdefault(key, {}).setdefault(r["eval_split"], {})[r["seed"]] = r["value"]
        shifts[r["eval_split"]] = r["shift"]
    return data, shifts


def distortion_figure(title: str, records: Sequence[dict[str, Any]], group: Sequence[Series]) -> Figure | None:
    """Feature change from the pretrained backbone (mean squared change, log scale when positive; mean cosine
    similarity), one bar (mean +- 90% interval over seeds) per FT / LP-FT family and split, each family in its
    own colour (variants: shades and hatches); ``None`` without such records."""
    metrics = [("feature_sq_change", "mean squared feature change"), ("feature_cosine", "mean cosine similarity")]
    styles = family_styles(group)
    found = {m: _distortion_data(records, group, m) for m, _ in metrics}
    found = {m: d for m, d in found.items() if d[0]}
    if not found:
        return None
    fams = [s for s in group if any(family_key(s) in d for d, _ in found.values())]
    shifts = {sp: sh for _, sh_ in found.values() for sp, sh in sh_.items()}
    splits = sorted(shifts, key=lambda sp: (shifts[sp] != "id", sp))
    width = 0.8 / len(fams)
    panel_w = max(4.5, 1.2 + 0.12 * len(fams) * len(splits))
    fig = Figure(figsize=(panel_w * len(found), 3.8), layout="constrained")
    axes = fig.subplots(1, len(found), squeeze=False)[0]
    for ax, (metric, label) in zip(axes, [m for m in metrics if m[0] in found]):
        data = found[metric][0]
        for j, s in enumerate(fams):
            st, per = styles[family_key(s)], data.get(family_key(s), {})
            xs, ms, cs = [], [], []
            for i, sp in enumerate(splits):
                if per.get(sp):
                    mean, ci = mean_ci(per[sp])
                    xs.append(i + (j - (len(fams) - 1) / 2) * width), ms.append(mean), cs.append(ci)
            ax.bar(xs, ms, width, yerr=cs, capsize=2, color=st.color, hatch=st.hatch or None, edgecolor="white",
                   linewidth=0)
        ax.set_xticks(range(len(splits)))
        ax.set_xticklabels([f"{sp}\n({shifts[sp].upper()})" for sp in splits], fontsize=7)
        ax.set_ylabel(label)
        if metric == "feature_sq_change" and all(v > 0 for per in data.values() for d in per.values()
                                                 for v in d.values()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    handles = [Patch(facecolor=styles[family_key(s)].color, hatch=styles[family_key(s)].hatch or None,
                     edgecolor="white", linewidth=0) for s in fams]
    legend_below(fig, handles, [family_label(s, group) for s in fams], fontsize=7)
    fig.suptitle(title)
    return fig

