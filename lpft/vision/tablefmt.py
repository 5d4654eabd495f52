"""Row model and rendering of the results tables built by :mod:`lpft.vision.table`.

A table is a list of :class:`Row` (one per method variant and (benchmark, backbone)), each holding one
:class:`Cell` per column (``id_test``, the OOD splits, ``ood_avg``). This module only renders rows:
markdown and LaTeX (one block per (benchmark, backbone), with the published number and the difference
beside each cell, and footnotes) and a long-format CSV with full precision.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from lpft.vision.published import citation, difference

Z90 = 1.645  # two-sided 90% normal quantile: LP-FT reports mean +- 1.645 std / sqrt(n)
#: what each value of the record field ``selection`` means (the set that picks epoch, C and learning rate)
SELECTION_TEXT = {
    "heldout": "a split held out from the ID training set",
    "paper": "the set the paper's official code selects on",
}
WISEFT_LINEAR_NOTE = ("WiSE-FT (linear head): theta_1 differs from theta_0 in the head only; compared with "
                      "WiSE-FT's linear-classifier (LC) rows, never with its end-to-end rows")


@dataclass(frozen=True)
class Agg:
    """Mean over seeds with the LP-FT 90% interval ``1.645 * std / sqrt(n)`` (``ci`` None for n = 1)."""

    mean: float
    ci: float | None
    n: int


def aggregate(values: Sequence[float]) -> Agg:
    """Mean +- 1.645 std(ddof=1) / sqrt(n) over seeds (Kumar et al. 2022: "90% confidence intervals").

    Raises:
        ValueError: no values.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("aggregate() needs at least one value")
    n = len(vals)
    ci = Z90 * statistics.stdev(vals) / math.sqrt(n) if n > 1 else None
    return Agg(statistics.fmean(vals), ci, n)


@dataclass
class Cell:
    """One table cell: our aggregate, the oracle's alpha (WiSE-FT oracle rows) and the published entry."""

    agg: Agg | None
    alpha: float | None = None  # the oracle's alpha for this column
    published: dict | None = None

    @property
    def diff(self) -> float | None:
        """Ours minus published, in percentage points (``None`` when either is missing)."""
        return difference(None if self.agg is None else 100 * self.agg.mean, self.published)


@dataclass
class Row:
    """One row of a (benchmark, backbone) block."""

    benchmark: str
    backbone: str
    method: str
    label: str
    bn_stats: str | None
    lr: float | None
    lr_scores: dict
    alpha: float | str | None  # None, a number, or "oracle"
    cells: dict[str, Cell]
    selection: str = "heldout"
    wiseft_finetune: str | None = None  # WiSE-FT rows only: "end_to_end" | "linear"
    notes: list[str] = field(default_factory=list)  # footnotes of the row's block
    metric: str = "acc"  # what the cells hold: "acc" | "ece" | "nll"


#: how each metric is shown: (scale, decimals, the footnote's name for it)
METRIC_TEXT = {"acc": (100.0, 1, "accuracy in %"),
               "ece": (100.0, 1, "expected calibration error in % (15 equal-width bins, top-1 confidence; lower is "
                                 "better)"),
               "nll": (1.0, 3, "negative log-likelihood in nats per example (lower is better)")}


def pct(agg: Agg | None, with_n: int | None = None, metric: str = "acc") -> str:
    """``mean ± ci`` in percent (NLL: in nats), with ``(n=..)`` when the number of seeds differs from ``with_n``."""
    if agg is None:
        return ""
    k, d, _ = METRIC_TEXT[metric]
    s = f"{k * agg.mean:.{d}f}" + (f" ± {k * agg.ci:.{d}f}" if agg.ci is not None else "")
    if with_n is not None and agg.n != with_n:
        s += f" (n={agg.n})"
    return s


def group_rows(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows by (benchmark, backbone), in first-seen order."""
    out: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        out[(r.benchmark, r.backbone)].append(r)
    return out


def selection_notes(rows: Sequence[Row]) -> list[str]:
    """The block's selection footnote: one set for every row, or a warning that the rows mix sets."""
    used = sorted({r.selection for r in rows})
    if len(used) == 1:
        return [f"model selection (epoch, C, learning rate) on {SELECTION_TEXT.get(used[0], used[0])} "
                f"(selection={used[0]})"]
    sets = "; ".join(f"{s}: {SELECTION_TEXT.get(s, s)}" for s in used)
    return [f"these rows MIX selection sets ({sets}); each row's set is in its label and the 'sel.' column, "
            "and rows with different sets are not directly comparable"]


def _grid(rows: Sequence[Row], escape=lambda s: s) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body and footnotes of one (benchmark, backbone) block."""
    cols = list(rows[0].cells)
    has_pub = any(c.published for r in rows for c in r.cells.values())
    mixed = len({r.selection for r in rows}) > 1
    nmax = max((c.agg.n for r in rows for c in r.cells.values() if c.agg), default=0)
    header = ["method", "lr"] + (["sel."] if mixed else [])
    for c in cols:
        header += [c] + (["pub", "Δ"] if has_pub else [])
    body, sources = [], []
    for r in rows:
        line = [r.label, "" if r.lr is None else f"{r.lr:g}"] + ([r.selection] if mixed else [])
        for c in cols:
            cell = r.cells[c]
            txt = pct(cell.agg, nmax, rows[0].metric)
            if cell.alpha is not None and cell.agg is not None:
                txt += f" @{cell.alpha:g}"
            line.append(txt)
            if has_pub:
                p = cell.published
                line += ["" if p is None else f"{p['value']:.1f}",
                         "" if cell.diff is None else f"{cell.diff:+.1f}"]
                if p is not None and citation(p) not in sources:
                    sources.append(citation(p))
        body.append([escape(x) for x in line])
    notes = [f"{METRIC_TEXT[rows[0].metric][2]}, mean ± 1.645·std/√n over seeds (n={nmax} unless marked); learning rate chosen "
             "by mean ID-val accuracy; oracle α: best α per column on that split (@α), not a fair selection"]
    notes += selection_notes(rows)
    for r in rows:
        notes += [n for n in r.notes if n not in notes]
    notes += [f"published: {s}" for s in sources]
    return [escape(h) for h in header], body, notes


def summary_grid(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Methods x benchmarks: ID (``id_test``) and OOD (``ood_avg``, or the only OOD split) per
    (benchmark, backbone), plus the plain average over benchmarks when a row has every benchmark
    (LP-FT's "Ave" column)."""
    groups = group_rows(rows)
    header, labels = ["method"], []
    for (bench, bb), rs in groups.items():
        header += [f"{bench}/{bb} ID", f"{bench}/{bb} OOD"]
        labels += [r.label for r in rs if r.label not in labels]
    header += ["avg ID", "avg OOD"]
    body = []
    for label in labels:
        line, ids, oods = [label], [], []
        for rs in groups.values():
            r = next((r for r in rs if r.label == label), None)
            ood_col = "ood_avg" if r is not None and "ood_avg" in r.cells else next(
                (c for c in (r.cells if r else {}) if c != "id_test"), None)
            for col, acc in (("id_test", ids), (ood_col, oods)):
                c = r.cells.get(col) if r is not None and col is not None else None
                line.append(pct(c.agg, metric=r.metric) if c is not None else "")
                if c is not None and c.agg is not None:
                    acc.append(c.agg.mean)
        n, (k, d, _) = len(groups), METRIC_TEXT[rows[0].metric]
        line += [f"{k * statistics.fmean(v):.{d}f}" if len(v) == n else "" for v in (ids, oods)]
        body.append(line)
    return header, body


def format_markdown(rows: Sequence[Row]) -> str:
    """One markdown table per (benchmark, backbone), with published numbers and differences; a
    methods x benchmarks summary first when there are several benchmarks."""
    parts = []
    if len(group_rows(rows)) > 1:
        header, body = summary_grid(rows)
        parts.append(f"### summary (ID / OOD average; {METRIC_TEXT[rows[0].metric][2]})\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join("---" for _ in header) + "|")
        parts += ["| " + " | ".join(b) + " |" for b in body]
        parts.append("")
    for (bench, bb), rs in group_rows(rows).items():
        header, body, notes = _grid(rs)
        parts.append(f"### {bench} / {bb}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join("---" for _ in header) + "|")
        parts += ["| " + " | ".join(b) + " |" for b in body]
        parts.append("")
        parts += [f"- {n}" for n in notes]
        parts.append("")
    return "\n".join(parts)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("α", r"$\alpha$"), ("Δ", r"$\Delta$"), ("√", r"$\sqrt{}$"), ("·", r"$\cdot$")):
        s = s.replace(a, b)
    return s


def format_latex(rows: Sequence[Row]) -> str:
    """One ``tabular`` per (benchmark, backbone) (needs only ``booktabs``); footnotes as comments."""
    parts = []
    for (bench, bb), rs in group_rows(rows).items():
        header, body, notes = _grid(rs, escape=_tex)
        parts.append(f"% {bench} / {bb}")
        parts.append(r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}")
        parts.append(r"\toprule")
        parts.append(" & ".join(header) + r" \\")
        parts.append(r"\midrule")
        parts += [" & ".join(b) + r" \\" for b in body]
        parts.append(r"\bottomrule")
        parts.append(r"\end{tabular}")
        parts += [f"% {_tex(n)}" for n in notes]
        parts.append("")
    return "\n".join(parts)


CSV_FIELDS = ("benchmark", "backbone", "method", "label", "bn_stats", "selection", "wiseft_finetune", "lr",
              "alpha", "split", "mean_pct", "ci_pct", "n", "oracle_alpha", "published_pct", "published_ci_pct",
              "diff_pct", "published_source", "metric")


def format_csv(rows: Sequence[Row]) -> str:
    """Long format: one line per (row, column) with full precision."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        k = METRIC_TEXT[r.metric][0]  # "_pct" columns: percent for acc / ece, nats for nll
        for split, c in r.cells.items():
            p = c.published
            w.writerow(dict(
                benchmark=r.benchmark, backbone=r.backbone, method=r.method, label=r.label, bn_stats=r.bn_stats or "",
                selection=r.selection, wiseft_finetune=r.wiseft_finetune or "",
                lr="" if r.lr is None else repr(r.lr), alpha="" if r.alpha is None else r.alpha, split=split,
                mean_pct="" if c.agg is None else k * c.agg.mean, metric=r.metric,
                ci_pct="" if c.agg is None or c.agg.ci is None else k * c.agg.ci,
                n="" if c.agg is None else c.agg.n, oracle_alpha="" if c.alpha is None else c.alpha,
                published_pct="" if p is None else p["value"],
                published_ci_pct="" if p is None or p.get("ci") is None else p["ci"],
                diff_pct="" if c.diff is None else c.diff, published_source="" if p is None else citation(p)))
    return buf.getvalue()


FORMATS = {"markdown": format_markdown, "latex": format_latex, "csv": format_csv}


def format_table(rows: Sequence[Row], fmt: str = "markdown") -> str:
    """Render rows as ``markdown``, ``latex`` or ``csv``.

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt](rows)
