"""The papers' own vision figures, redrawn from the published numbers the package ships (``published.json``).

* ``paper-lpft_accuracy``: Kumar et al. 2022 (LP-FT), Tables 1 (ID) and 2 (OOD): LP, FT and LP-FT accuracy per
  benchmark column with the published 90% intervals, one small panel per column (each with its own y-range, so
  differences of a point are visible);
* ``paper-wiseft_id_vs_ood``: Wortsman et al. 2022 (WiSE-FT), the ID-vs-OOD view of its Fig. 1 / Table 1: x =
  ImageNet accuracy, y = the average over the distribution shifts, one panel per CLIP backbone, with the
  zero-shot, fine-tuned (end-to-end; linear classifier where published) and WiSE-FT points. Only the alphas in
  ``published.json`` exist (0 = zero-shot, 0.5, 1 = fine-tuned, and the per-column optimum, which is not one model):
  the lines join those points only, the paper's curves are denser.

With runs (a runs folder or loaded records), each (benchmark, split, method[, alpha]) cell that a run family
measured gets a star at the run's mean accuracy over seeds, computed by the :mod:`lpft.vision.table` machinery
(learning rate selected on ID validation). LP-FT panels are matched by benchmark: a filled star is a run with the
paper's backbone, a hollow star a run with another backbone. WiSE-FT panels are matched by backbone (a panel per
backbone); ImageNet runs with a backbone that has no panel are reported as not overlaid.

Each published point carries the matplotlib ``gid`` ``"published:<i>"`` (``i`` = its index in
:func:`lpft.vision.published.published_entries`; a WiSE-FT point ``"published:<i>,<j>"``, its ImageNet and
shift-average entries) and each run star ``"run:" + RunPoint.key``, so tests and users
can read the plotted values back from the artists; the published 90% interval of LP-FT point ``i`` is the
``LineCollection`` with ``gid`` ``"ci:<i>"``.
"""

from __future__ import annotations

import os
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lpft.vision.io import atomic_path
from lpft.vision.published import published_entries

__all__ = ["RunPoint", "PaperFigures", "run_points", "lpft_accuracy_figure", "wiseft_figure", "make_paper_figures",
           "FIGURE_NAMES"]

FIGURE_NAMES = ("paper-lpft_accuracy", "paper-wiseft_id_vs_ood")
LPFT_METHODS = ("lp", "ft", "lpft")
LABEL = {"zeroshot": "zero-shot", "lp": "LP", "ft": "FT", "lpft": "LP-FT", "wiseft": "WiSE-FT"}
COLOR = {"zeroshot": "tab:gray", "lp": "tab:blue", "ft": "tab:red", "lpft": "tab:green", "wiseft": "tab:purple"}
RUN_NOTE = "your runs: star at the mean over seeds (filled: the paper's backbone, hollow: another backbone)"
# WiSE-FT points drawn when published for both ImageNet and the shift average: (method, alpha, variant, marker,
# colour, label). ``lp`` rows are WiSE-FT's fine-tuned linear classifier, alpha = 1 of the LC path
# (lpft/vision/published.py).
WISE_ROLES = (
    ("zeroshot", None, None, "o", "tab:gray", "zero-shot (α=0)"),
    ("ft", None, None, "s", "tab:red", "fine-tuned end-to-end (α=1)"),
    ("wiseft", 0.5, None, "D", "tab:purple", "WiSE-FT end-to-end α=0.5"),
    ("wiseft", "oracle", None, "D", "tab:purple", "WiSE-FT end-to-end, optimal α per column"),
    ("lp", None, None, "s", "tab:blue", "fine-tuned linear classifier (α=1)"),
    ("wiseft", 0.5, "LC", "D", "tab:blue", "WiSE-FT linear classifier α=0.5"),
    ("wiseft", "oracle", "LC", "D", "tab:blue", "WiSE-FT linear classifier, optimal α per column"),
)


# ------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class RunPoint:
    """One run family's mean accuracy (percent) on one split, at its ID-val-selected learning rate.

    ``variant`` is ``"LC"`` for linear-head WiSE-FT (compared with the paper's linear-classifier rows), else
    ``None``; ``split`` may be ``"ood_avg"`` (per-seed mean over the ``n_ood`` OOD splits of the benchmark).
    """

    benchmark: str
    backbone: str
    method: str
    split: str
    alpha: float | None
    variant: str | None
    bn_stats: str | None
    selection: str
    lr: float | None
    mean: float
    n_seeds: int
    n_ood: int

    @property
    def key(self) -> str:
        return ":".join(str(x) for x in (self.benchmark, self.backbone, self.method, self.split, self.alpha,
                                         self.variant, self.bn_stats, self.selection))


def run_points(records: Sequence[dict[str, Any]]) -> list[RunPoint]:
    """Mean accuracies of every run family (see :class:`RunPoint`) from records read by
    :func:`lpft.vision.table.load_records`, with the table's rules (ID-val learning-rate selection, same-config
    check; its errors propagate)."""
    from lpft.vision.table import build_series, ood_splits, per_seed, select_lr

    out = []
    for (bench, bb), group in build_series(records).items():
        oods = ood_splits(group)
        splits = ["id_test", *oods] + (["ood_avg"] if oods else [])
        for s in group:
            lr, _ = select_lr(s)
            variant = "LC" if s.wiseft_finetune == "linear" else None
            for alpha in s.alphas(lr):
                for split in splits:
                    v = per_seed(s, lr, alpha, split, oods)
                    if v:
                        out.append(RunPoint(bench, bb, s.method, split, alpha, variant, s.bn_stats, s.selection, lr,
                                            100.0 * statistics.fmean(v.values()), len(v), len(oods)))
    return out


def _star(ax, x: float, y: float, p: RunPoint, color: str, filled: bool) -> None:
    ax.scatter([x], [y], marker="*", s=150, facecolors=color if filled else "none", edgecolors=color,
               linewidths=1.2, zorder=4, gid="run:" + p.key)


# --------------------------------------------------------------------------------------------- LP-FT
def _lpft_panels() -> list[dict[str, Any]]:
    """LP-FT entries grouped by (table, column) in published.json's order; each panel's ``kind`` is ID or OOD."""
    panels: dict[tuple, dict[str, Any]] = {}
    for i, e in enumerate(published_entries()):
        if not e["paper"].startswith("Kumar") or e["method"] not in LPFT_METHODS:
            continue
        p = panels.setdefault((e["table"], e["column"]), {
            "table": e["table"], "column": e["column"], "benchmark": e["benchmark"], "split": e["split"],
            "backbone": e["backbone"], "backbone_paper": e["backbone_paper"], "source": e.get("source", e["paper"]),
            "paper": e["paper"], "kind": "ID" if e["split"] == "id_test" else "OOD", "entries": {}})
        p["entries"][e["method"]] = (i, e)
    return list(panels.values())


def lpft_accuracy_figure(points: Sequence[RunPoint] = ()) -> Figure:
    """LP-FT Tables 1-2 as a dot plot (one panel per table column, ID row and OOD row), runs overlaid.

    Args:
        points: run means (:func:`run_points`); those matching a panel's benchmark, split and method are drawn.

    Returns:
        The figure (matplotlib ``Figure``, no pyplot state).
    """
    panels = _lpft_panels()
    rows = [[p for p in panels if p["kind"] == k] for k in ("ID", "OOD")]
    ncols = max(len(r) for r in rows)
    fig = Figure(figsize=(2.3 * ncols, 6.6), layout="constrained")
    axes = fig.subplots(2, ncols, squeeze=False)
    unmapped, drawn_runs = [], False
    id_names = {p["benchmark"]: p["column"] for p in rows[0]}
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            p = row[c]
            ys = []
            for x, m in enumerate(LPFT_METHODS):
                if m not in p["entries"]:
                    continue
                i, e = p["entries"][m]
                ci = e.get("ci")
                if ci:
                    bars = ax.errorbar([x], [e["value"]], yerr=[ci], fmt="none", ecolor=COLOR[m], capsize=3, lw=1.2)
                    bars.lines[2][0].set_gid(f"ci:{i}")
                ax.scatter([x], [e["value"]], s=36, color=COLOR[m], zorder=3, gid=f"published:{i}")
                ax.annotate(f"{e['value']:.1f}" + (f"±{ci:.1f}" if ci is not None else ""), (x, e["value"]),
                            textcoords="offset points", xytext=(0, 7), ha="center", fontsize=6.5)
                ys += [e["value"] - (ci or 0), e["value"] + (ci or 0)]
                for q in points:
                    if (p["split"] is not None and q.benchmark == p["benchmark"] and q.split == p["split"]
                            and q.method == m and q.alpha is None):
                        _star(ax, x + 0.3, q.mean, q, COLOR[m], q.backbone == p["backbone"])
                        ax.annotate(f"{q.mean:.1f}", (x + 0.3, q.mean), textcoords="offset points", xytext=(6, -3),
                                    fontsize=6, color=COLOR[m])
                        ys.append(q.mean)
                        drawn_runs = True
            if p["split"] is None:
                unmapped.append(p["column"])
            lo, hi = min(ys), max(ys)
            pad = max(1.5, 0.15 * (hi - lo))
            ax.set_ylim(lo - pad, hi + 1.6 * pad)
            ax.set_xlim(-0.5, len(LPFT_METHODS) - 0.3)
            ax.set_xticks(range(len(LPFT_METHODS)), [LABEL[m] for m in LPFT_METHODS], fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            id_name = id_names.get(p["benchmark"], p["benchmark"])
            where = p["column"] if p["column"] == id_name else f"{p['column']} (shift of {id_name})"
            ax.set_title(f"{p['kind']}: {where}\n{_short_backbone(p['backbone_paper'])}", fontsize=7.5)
            ax.grid(alpha=0.3, axis="y")
        axes[r][0].set_ylabel(f"{row[0]['kind']} accuracy (%)" if row else "")
    tables = "; ".join(dict.fromkeys(p["table"] for p in panels))
    fig.suptitle(f"{panels[0]['paper']}: {tables}\n(source: {panels[0]['source']})", fontsize=9)
    notes = ["Published mean ± 90% interval over 3 runs, as in the paper; only the cells in "
             "lpft/vision/published.json."]
    if unmapped:
        notes.append(f"{', '.join(dict.fromkeys(unmapped))} OOD: the paper gives one number whose lpft split is "
                     "ambiguous (see the notes in published.json), so no run is overlaid there.")
    if drawn_runs:
        notes.append(RUN_NOTE + ".")
    spare = [ax for row in axes for ax in row if not ax.axison]
    if spare:  # an empty grid cell holds the notes
        spare[0].text(0.0, 1.0, "\n\n".join(textwrap.fill(n, 34) for n in notes), fontsize=7, va="top",
                      transform=spare[0].transAxes)
    else:
        fig.supxlabel("\n".join(notes), fontsize=7)
    return fig


def _short_backbone(name: str) -> str:
    return name.split(" (")[0] if len(name) > 24 else name


# -------------------------------------------------------------------------------------------- WiSE-FT
def _wise_entries() -> dict[str, dict[tuple, tuple[int, dict[str, Any]]]]:
    """WiSE-FT ImageNet entries by backbone -> (method, alpha, variant, split) -> (index, entry)."""
    out: dict[str, dict[tuple, tuple[int, dict[str, Any]]]] = {}
    for i, e in enumerate(published_entries()):
        if e["paper"].startswith("Wortsman") and e["benchmark"] == "imagenet" and e["variant"] in (None, "LC"):
            out.setdefault(e["backbone"], {})[(e["method"], e["alpha"], e["variant"], e["split"])] = (i, e)
    return out


def wiseft_figure(points: Sequence[RunPoint] = ()) -> tuple[Figure, list[str]]:
    """WiSE-FT's ID-vs-OOD view (x = ImageNet, y = average over the shifts), one panel per backbone, runs overlaid.

    Args:
        points: run means (:func:`run_points`); ImageNet runs with a panel's backbone are drawn on it.

    Returns:
        ``(figure, not_overlaid)``: the ImageNet run families (``backbone``) that have no panel.
    """
    by_bb = _wise_entries()
    fig = Figure(figsize=(5.6 * len(by_bb), 5.6), layout="constrained")
    axes = fig.subplots(1, len(by_bb), squeeze=False)[0]
    tables_all: list[str] = []
    for ax, (bb, cells) in zip(axes, by_bb.items()):
        xy: dict[tuple, tuple[float, float]] = {}
        tables: list[str] = []
        for method, alpha, variant, marker, color, label in WISE_ROLES:
            a, b = cells.get((method, alpha, variant, "id_test")), cells.get((method, alpha, variant, "ood_avg"))
            if a is None or b is None:
                continue
            x, y = a[1]["value"], b[1]["value"]
            xy[(method, alpha, variant)] = (x, y)
            ax.scatter([x], [y], marker=marker, s=55, zorder=3, facecolors="none" if alpha == "oracle" else color,
                       edgecolors=color, linewidths=1.3, label=label, gid=f"published:{a[0]},{b[0]}")
            ax.annotate(f"({x:.1f}, {y:.1f})", (x, y), textcoords="offset points", fontsize=6.5,
                        xytext=(5, 4) if alpha == "oracle" else (5, -10))
            tables += [a[1]["table"].split(" (")[0], b[1]["table"].split(" (")[0]]
        for path, color, ls in (((("zeroshot", None, None), ("wiseft", 0.5, None), ("ft", None, None)), "tab:purple",
                                 "-"),
                                ((("zeroshot", None, None), ("wiseft", 0.5, "LC"), ("lp", None, None)), "tab:blue",
                                 "--")):
            pts = [xy[k] for k in path if k in xy]
            if len(pts) >= 2:
                ax.plot([q[0] for q in pts], [q[1] for q in pts], ls, color=color, lw=1, zorder=2)
        alphas = sorted({float(k[1]) for k in cells if k[0] == "wiseft" and k[1] != "oracle"})
        text = ("published α: 0 (zero-shot), " + ", ".join(f"{a:g}" for a in alphas) + ", 1 (fine-tuned)"
                + (" and the optimal α per column (hollow; not one model)" if any(k[1] == "oracle" for k in cells)
                   else "") + ".\nLines join these points only; the paper's curves have more α.\n"
                "Not drawn: the rows Table 1 quotes from the CLIP paper, Table 8's repeat of Table 1.")
        ax.text(0.02, 0.98, text, transform=ax.transAxes, fontsize=6.5, va="top")
        _overlay_wise(ax, [q for q in points if q.benchmark == "imagenet" and q.backbone == bb])
        zs = next((e for (m, al, v, sp), (_, e) in cells.items() if m == "zeroshot" and v is None), None)
        shifts = [e["column"] for (m, al, v, sp), (_, e) in cells.items()
                  if m == "zeroshot" and v is None and sp not in ("id_test", "ood_avg", "avg_ref_shifts")]
        name = zs["backbone_paper"] if zs else bb
        tables = list(dict.fromkeys(tables))
        tables_all += tables
        ax.set_title(f"{name}: {', '.join(tables)}", fontsize=9)
        ax.set_xlabel("ImageNet top-1 accuracy (%)")
        ax.set_ylabel(f"average over {len(shifts)} distribution shifts (%)\n({', '.join(shifts)})", fontsize=8)
        ax.grid(alpha=0.3)
        ax.margins(0.12)
        ax.set_ylim(top=ax.get_ylim()[1] + 0.12 * (ax.get_ylim()[1] - ax.get_ylim()[0]))  # room for the text
    paper = next(e for c in by_bb.values() for _, e in c.values())["paper"]
    fig.suptitle(f"{paper}: zero-shot, fine-tuned and WiSE-FT on ImageNet, as published "
                 f"({', '.join(dict.fromkeys(tables_all))})", fontsize=9)
    handles = {}
    for ax in axes:  # one legend for both panels: the same roles, most of them in each
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=4, fontsize=7)
    missing = sorted({q.backbone for q in points if q.benchmark == "imagenet" and q.backbone not in by_bb})
    return fig, [f"imagenet/{bb}: no published WiSE-FT numbers for this backbone" for bb in missing]


def _overlay_wise(ax, points: Sequence[RunPoint]) -> None:
    fams: dict[tuple, dict[float | None, dict[str, RunPoint]]] = {}
    for q in points:
        if q.split in ("id_test", "ood_avg"):
            fam = (q.method, q.variant, q.bn_stats, q.selection)
            fams.setdefault(fam, {}).setdefault(q.alpha, {})[q.split] = q
    for (method, variant, _, _), by_alpha in fams.items():
        color = "tab:blue" if variant == "LC" else COLOR.get(method, "black")
        path = []
        for alpha in sorted(by_alpha, key=lambda a: (a is None, a or 0.0)):
            d = by_alpha[alpha]
            if "id_test" in d and "ood_avg" in d:
                x, y = d["id_test"].mean, d["ood_avg"].mean
                _star(ax, x, y, d["ood_avg"], color, True)
                path.append((x, y))
        if method == "wiseft" and len(path) >= 2:
            ax.plot([p[0] for p in path], [p[1] for p in path], ":", color=color, lw=1, zorder=2)
    if fams:
        ax.add_line(Line2D([], [], marker="*", ls="none", color="black",
                           label="your runs (mean over seeds; dotted: your WiSE-FT α path)"))


# ------------------------------------------------------------------------------------------------ files
@dataclass
class PaperFigures:
    """What :func:`make_paper_figures` did: written paths per figure, and which run groups were (not) overlaid."""

    paths: dict[str, list[Path]] = field(default_factory=dict)
    overlaid: list[str] = field(default_factory=list)
    not_overlaid: list[str] = field(default_factory=list)


def save(fig: Figure, stem: str | os.PathLike, *, pdf: bool = False, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (and ``<stem>.pdf`` when ``pdf``), atomically; return the paths."""
    out = []
    for ext in ("png", "pdf") if pdf else ("png",):
        path = Path(f"{stem}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi)
        out.append(path)
    return out


def make_paper_figures(out_dir: str | os.PathLike, runs: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
                       *, pdf: bool = False, dpi: int = 150) -> PaperFigures:
    """Write both paper figures into ``out_dir`` (names in :data:`FIGURE_NAMES`), with runs overlaid when given.

    Args:
        out_dir: output folder (created).
        runs: a runs folder (every ``records.jsonl`` under it), records already loaded with
            :func:`lpft.vision.table.load_records`, or ``None`` for the published numbers alone.
        pdf: also write PDFs.
        dpi: PNG resolution.

    Returns:
        :class:`PaperFigures`.

    Raises:
        FileNotFoundError: ``runs`` is a folder without ``records.jsonl``.
        ValueError: malformed records or runs pooled across different configs (from :mod:`lpft.vision.table`).
    """
    points: list[RunPoint] = []
    if runs is not None:
        from lpft.vision.table import load_records

        records = load_records(runs) if isinstance(runs, (str, os.PathLike)) else list(runs)
        points = run_points(records)
    out = PaperFigures()
    lpft_fig = lpft_accuracy_figure(points)
    wise_fig, missing = wiseft_figure(points)
    out.not_overlaid += missing
    for name, fig in zip(FIGURE_NAMES, (lpft_fig, wise_fig)):
        out.paths[name] = save(fig, Path(out_dir) / name, pdf=pdf, dpi=dpi)
    for fig, name in ((lpft_fig, FIGURE_NAMES[0]), (wise_fig, FIGURE_NAMES[1])):
        groups = sorted({g.split(":")[1] + "/" + g.split(":")[2] for ax in fig.axes for g in _gids(ax)
                         if g.startswith("run:")})
        out.overlaid += [f"{name}: {g}" for g in groups]
    shown = {o.split(": ", 1)[1] for o in out.overlaid}
    for g in sorted({f"{q.benchmark}/{q.backbone}" for q in points} - shown):
        if not any(m.startswith(g + ":") for m in out.not_overlaid):
            out.not_overlaid.append(f"{g}: no published cell in these figures matches its benchmark, method and split")
    return out


def _gids(ax) -> list[str]:
    return [c.get_gid() for c in ax.collections if c.get_gid()]
