"""Styles and layout of the per-run figures (:mod:`lpft.vision.plot`) for groups of many method families.

* :func:`family_styles`: every family of a group gets its own (colour, marker) pair (and a bar hatch). The
  method keeps its base colour (:data:`COLORS`); its variants (fine-tuning options, soup variants, WiSE-FT
  sources, BN statistics) are shades of that colour with their own markers, so e.g. every ``ft [...]`` family
  stays recognisably red. The first family of a method in the group's order (the one without options) gets the
  plain base colour and a circle, as before there were variants.
* :func:`family_label`: the family's label (:attr:`lpft.vision.table.Series.label`, so nothing of it is lost),
  wrapped at commas; :func:`legend_below` puts the legend under all axes and grows the figure to hold it.
* :func:`fit_limits`, :func:`logit_ticks`: axis limits around the plotted points with a margin;
  :func:`place_labels`: point labels (WiSE-FT's alphas) placed so that they overlap neither each other nor the
  marked points, using the renderer's real text extents.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

__all__ = ["COLORS", "MARKERS", "Style", "family_styles", "family_label", "wrap_label", "legend_below",
           "fit_limits", "logit_ticks", "place_labels", "REFERENCE"]

COLORS = {"zeroshot": "tab:gray", "lp": "tab:blue", "ft": "tab:red", "lpft": "tab:green", "wiseft": "tab:purple",
          "soup": "tab:brown"}
_SPARE_COLORS = ("tab:orange", "tab:pink", "tab:olive", "tab:cyan")  # methods without a colour of their own
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", "p", ">", "h", "*")
# blend towards white (> 0) or black (< 0), by variant index; 11 shades and 12 markers are coprime, so
# (shade, marker) repeats only after 132 variants of one method
_SHADES = (0.0, -0.35, 0.35, -0.2, 0.5, -0.5, 0.2, -0.1, 0.55, 0.1, -0.42)
_HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "++", "--", "**", "||", "OO", "..//")
REFERENCE = "reference"  # gid of guide lines (diagonal, fitted line): not data, may leave the axes


@dataclass(frozen=True)
class Style:
    """How one family is drawn: ``color`` (hex), ``marker``, ``hatch`` (bars) and ``linestyle`` (curves)."""

    color: str
    marker: str
    hatch: str = ""
    linestyle: str = "-"


def _shade(color: str, t: float) -> str:
    rgb = np.array(to_rgb(color))
    target = np.ones(3) if t > 0 else np.zeros(3)
    return to_hex((1 - abs(t)) * rgb + abs(t) * target)


def family_key(s) -> tuple:
    """What tells two families of one (benchmark, backbone) apart (the fields of :class:`~lpft.vision.table.Series`
    that :func:`lpft.vision.table.build_series` groups by)."""
    return (s.benchmark, s.backbone, s.method, s.bn_stats, s.selection, s.wiseft_finetune, s.soup_variant, s.options)


def family_styles(group: Sequence) -> dict[tuple, Style]:
    """A distinct (colour, marker) pair for every family of ``group``, keyed by :func:`family_key`.

    Variants of one method are numbered in the group's order (``build_series`` puts the plain family first):
    variant ``i`` gets shade ``i`` of the method's colour and marker ``i``. Should two pairs still coincide (a
    method reusing a spare colour), the later family moves to the next free marker.

    Args:
        group: the families (:class:`~lpft.vision.table.Series`) of one (benchmark, backbone).

    Returns:
        ``{family_key(s): Style}``; WiSE-FT with interpolated BN statistics gets a dashed line.
    """
    base: dict[str, str] = {}
    count: dict[str, int] = {}
    used: set[tuple[str, str]] = set()
    out: dict[tuple, Style] = {}
    for s in group:
        if s.method not in base:
            spare = [c for c in _SPARE_COLORS if c not in base.values()] or list(_SPARE_COLORS)
            base[s.method] = COLORS.get(s.method, spare[0])
        i = count.get(s.method, 0)
        count[s.method] = i + 1
        color = _shade(base[s.method], _SHADES[i % len(_SHADES)])
        m = i
        while (color, MARKERS[m % len(MARKERS)]) in used and m < i + len(MARKERS):
            m += 1
        marker = MARKERS[m % len(MARKERS)]
        used.add((color, marker))
        out[family_key(s)] = Style(color, marker, _HATCHES[i % len(_HATCHES)],
                                   "--" if s.bn_stats == "interpolated" else "-")
    return out


def wrap_label(text: str, width: int = 56) -> str:
    """Break ``text`` into lines of at most ``width`` characters after commas or spaces (never inside a
    ``key=value``, nor between a number and its ``pp``); a single longer piece keeps its own line; continuation
    lines are indented by two spaces."""
    pieces = [p for p in re.split(r"(?<=[, ])(?!pp\b)", text) if p]
    lines, cur = [], ""
    for p in pieces:
        if cur and len(cur) + len(p.rstrip()) > width:
            lines.append(cur.rstrip())
            cur = "  " + p.lstrip()  # continuation lines indented
        else:
            cur += p
    lines.append(cur.rstrip())
    return "\n".join(lines)


def family_label(s, group: Sequence) -> str:
    """The family's full label (``Series.label``), with its selection set when the group mixes sets."""
    label = s.label
    if len({g.selection for g in group}) > 1:
        label += f" ({s.selection} selection)"
    return label


def legend_below(fig: Figure, handles: list, labels: list[str], fontsize: float = 7, width: int = 56):
    """One legend for the whole figure, under its axes (``outside lower center``: constrained layout keeps it off
    them), in as many columns as the figure's width holds; the figure grows by the legend's height so that the
    axes keep their size. Labels are wrapped with :func:`wrap_label`. Returns the legend (``None`` without
    entries)."""
    if not handles:
        return None
    labels = [wrap_label(t, width) for t in labels]
    char_in = 0.56 * fontsize / 72  # mean character width of the default sans-serif font, in inches
    col_in = max(len(ln) for t in labels for ln in t.split("\n")) * char_in + 0.75  # + handle and padding
    ncols = max(1, min(len(labels), int(fig.get_figwidth() // col_in)))
    per_col = math.ceil(len(labels) / ncols)
    heights = [sum(t.count("\n") * 1.2 + 1.7 for t in labels[c * per_col:(c + 1) * per_col]) for c in range(ncols)]
    fig.set_figheight(fig.get_figheight() + max(heights) * fontsize / 72 + 0.25)
    return fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=fontsize)


def _logit(v):
    v = np.clip(np.asarray(v, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(v / (1 - v))


def fit_limits(xs: Sequence[float], ys: Sequence[float], logit_axes: bool = False, margin: float = 0.06,
               min_span: float = 0.01) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """``(xlim, ylim)`` holding every point with ``margin`` (a fraction of the span) on each side; ``None``
    without points. On logit axes margins are taken in logit space, so the limits stay inside (0, 1).

    ``min_span``: the smallest span (accuracy units; logit units ``20 * min_span`` on logit axes), so that a single
    point still gets a readable range.
    """
    if not len(xs):
        return None
    out = []
    for v in (xs, ys):
        if logit_axes:
            lv = _logit(v)
            lo, hi = float(lv.min()), float(lv.max())
            pad = margin * max(hi - lo, 20 * min_span) + 0.5 * max(0.0, 20 * min_span - (hi - lo))
            out.append(tuple(float(1 / (1 + math.exp(-z))) for z in (lo - pad, hi + pad)))
        else:
            lo, hi = float(np.min(v)), float(np.max(v))
            pad = margin * max(hi - lo, min_span) + 0.5 * max(0.0, min_span - (hi - lo))
            out.append((lo - pad, hi + pad))
    return out[0], out[1]


def _sym(vals) -> set[float]:
    return {round(v, 6) for p in vals for v in (p, 1 - p)}


# candidate ticks, coarse to fine: the first level giving 3 ticks is used
_TICK_LEVELS = (
    sorted(_sym([1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5])),
    sorted(_sym([2e-4, 2e-3, 0.02, 0.03, 0.15, 0.25])),
    sorted(_sym([k / 100 for k in range(1, 51)] + [k / 1000 for k in range(1, 10)]
                + [k / 10000 for k in range(1, 10)])),
)


def logit_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    """Tick positions (accuracies) for a logit axis from ``lo`` to ``hi``: round values (coarse ones first, finer
    ones only where fewer than 4 coarse values fall inside) at least ``1/most`` of the span apart in logit space,
    so that their labels never overlap; failing that, 3 evenly spaced values rounded to 2 significant digits of
    the error (``1 - acc`` above 50%; more digits where 2 do not tell them apart)."""
    llo, lhi = float(_logit(lo)), float(_logit(hi))
    gap = (lhi - llo) / most
    pool: set[float] = set()
    best: list[float] = []
    for level in _TICK_LEVELS:
        pool |= set(level)
        ticks: list[float] = []
        for v in sorted(pool):
            if lo <= v <= hi and (not ticks or float(_logit(v) - _logit(ticks[-1])) >= gap):
                ticks.append(v)
        if len(ticks) >= 4:
            return ticks
        best = max(best, ticks, key=len)
    if len(best) >= 3:
        return best
    for digits in (2, 3, 4, 6):
        out = set()
        for z in np.linspace(llo, lhi, 5)[1:-1]:
            p = 1 / (1 + math.exp(-z))
            q = float(f"{min(p, 1 - p):.{digits}g}")
            out.add(round(q if p < 0.5 else 1 - q, 12))
        if len(out) == 3:
            break
    return sorted(out)


def place_labels(ax, items: Sequence[tuple[float, float, str, str]], renderer, avoid: Sequence[tuple] = (),
                 fontsize: float = 7) -> list:
    """Annotate points so that the labels overlap neither each other nor the ``avoid`` points, inside the axes.

    Args:
        ax: the axes, with its final limits (and, for exact placement, after a layout pass).
        items: ``(x, y, text, color)`` in data coordinates; the same text at the same spot is written once.
        renderer: a renderer to measure text with (``fig.canvas.get_renderer()`` of an Agg canvas).
        avoid: data points (markers) labels must not cover.
        fontsize: in points.

    Returns:
        The annotations. Candidates ring the point at growing distance (beyond the first ring with a leader
        line); a label that fits nowhere takes the least bad one (covering markers before other labels).
    """
    to_disp = ax.transData.transform
    box = ax.get_window_extent(renderer)
    marks = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in (to_disp(p) for p in avoid)]
    taken: list = []  # placed labels: covering one costs more than covering a marker, leaving the axes most
    done: list[tuple[float, float, str]] = []
    out = []
    for x, y, text, color in items:
        px, py = to_disp((x, y))
        if any(t == text and abs(px - qx) < 3 and abs(py - qy) < 3 for qx, qy, t in done):
            continue
        done.append((px, py, text))
        best = None
        for r in (7, 14, 24, 36, 50):
            for ang in (-30, 30, 150, 210, -90, 90, 0, 180):
                dx, dy = r * math.cos(math.radians(ang)), r * math.sin(math.radians(ang))
                ha = "left" if dx > 1 else ("right" if dx < -1 else "center")
                ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va="center",
                                  fontsize=fontsize, color=color, zorder=5,
                                  bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
                                  arrowprops=dict(arrowstyle="-", color=color, lw=0.5) if r > 7 else None)
                ann.update_positions(renderer)
                bb = Text.get_window_extent(ann, renderer)  # the text alone: the leader line starts at the point
                pad = bb.padded(2)
                clash = (10 * sum(pad.overlaps(t) for t in taken) + sum(pad.overlaps(m) for m in marks)
                         + (0 if box.contains(bb.x0, bb.y0) and box.contains(bb.x1, bb.y1) else 100))
                if best is None or clash < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (clash, ann, bb)
                else:
                    ann.remove()
                if clash == 0:
                    break
            if best[0] == 0:
                break
        taken.append(best[2])
        out.append(best[1])
    return out
