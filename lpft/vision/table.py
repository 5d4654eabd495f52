"""Paper-style results tables from ``records.jsonl`` files, next to the published numbers.

Protocol (Kumar et al. 2022, LP-FT, Sec. 4 and App. B; PROTOCOL-LPFT 4.6):

* only the selected model of each run counts (records with ``epoch`` null) and only ``acc`` records;
* each method's learning rate is chosen by the **mean ID validation accuracy over seeds** (``id_val``),
  never by an OOD split; WiSE-FT's by its fine-tuned endpoint (the largest alpha, normally 1), since
  the whole alpha curve comes from that one fine-tuned model (Wortsman et al. 2022, Sec. 3);
* seeds are aggregated as mean +- 1.645 std / sqrt(n) (90% interval, ddof=1; no interval for n = 1);
* WiSE-FT rows: alpha = 0.5 (the paper's recommended fixed value) and the oracle that picks the best
  alpha per column on the evaluation split itself (Wortsman et al. Table 1), labelled as such.

Columns are ``id_test``, every OOD split, and ``ood_avg`` (the per-seed mean over the OOD splits, when
there are at least two). ``python -m lpft.vision.table --runs DIR [--format markdown|latex|csv]``.

Bad input never gives a silently wrong table: malformed lines, missing fields, non-finite values,
accuracies outside [0, 1] and duplicated measurements raise :class:`RecordsError` naming file and line.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lpft.vision.published import citation, difference, lookup
from lpft.vision.records import RecordsError, iter_records_files, read_records

Z90 = 1.645
METHOD_ORDER = ("zeroshot", "lp", "ft", "lpft", "wiseft")
NO_LR_METHODS = ("lp", "zeroshot")


# ----------------------------------------------------------------------------------------------- loading
def load_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record under ``root``, each with ``_where`` = ``"file:line"`` for error messages.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no ``records.jsonl``.
        RecordsError: a malformed file (the message names the file and line).
    """
    files = list(iter_records_files(root))
    if not files:
        raise FileNotFoundError(f"no records.jsonl under {root} (expected <runs>/<run_id>/records.jsonl)")
    out = []
    for path in files:
        recs = read_records(path)  # validates; errors name file:line
        lines = [i for i, ln in enumerate(Path(path).read_text().splitlines(), 1) if ln.strip()]
        for rec, line in zip(recs, lines):
            out.append(dict(rec, _where=f"{path}:{line}"))
    return out


def _check(rec: dict[str, Any]) -> None:
    where = rec.get("_where", "record")
    if not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool):
        raise RecordsError(f"{where}: seed must be an integer, got {rec['seed']!r}")
    for f in ("method", "backbone", "benchmark", "eval_split", "metric"):
        if not isinstance(rec[f], str) or not rec[f]:
            raise RecordsError(f"{where}: {f} must be a non-empty string, got {rec[f]!r}")
    lr = rec.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise RecordsError(f"{where}: lr must be a positive number or null, got {lr!r}")
    if rec["metric"] == "acc" and not 0.0 <= rec["value"] <= 1.0:
        raise RecordsError(f"{where}: acc must be a fraction in [0, 1], got {rec['value']!r}")


def final_records(records: Iterable[dict[str, Any]], metric: str = "acc") -> list[dict[str, Any]]:
    """Records of the selected models (``epoch`` null) with the given metric, type-checked."""
    out = []
    for r in records:
        if r["metric"] != metric or r.get("epoch") is not None:
            continue
        _check(r)
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------- stats
@dataclass(frozen=True)
class Agg:
    """Mean over seeds with the LP-FT 90% interval ``1.645 * std / sqrt(n)`` (``ci`` None for n = 1)."""

    mean: float
    ci: float | None
    n: int


def aggregate(values: Sequence[float]) -> Agg:
    """Mean +- 1.645 std(ddof=1) / sqrt(n) over seeds (Kumar et al. 2022: "90% confidence intervals")."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("aggregate() needs at least one value")
    n = len(vals)
    ci = Z90 * statistics.stdev(vals) / math.sqrt(n) if n > 1 else None
    return Agg(statistics.fmean(vals), ci, n)


# ------------------------------------------------------------------------------------------- structure
@dataclass
class Series:
    """Final accuracies of one (benchmark, backbone, method, bn_stats) family: ``values[(lr, alpha, split)][seed]``."""

    benchmark: str
    backbone: str
    method: str
    bn_stats: str | None
    values: dict[tuple, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    where: dict[tuple, str] = field(default_factory=dict)
    shifts: dict[str, str] = field(default_factory=dict)  # split -> "id" | "ood"

    @property
    def lrs(self) -> list[float | None]:
        return sorted({k[0] for k in self.values}, key=lambda v: (v is None, v or 0.0))

    def alphas(self, lr: float | None) -> list[float | None]:
        return sorted({k[1] for k in self.values if k[0] == lr}, key=lambda v: (v is None, v or 0.0))

    def seeds_of(self, lr, alpha, split) -> dict[int, float]:
        return self.values.get((lr, alpha, split), {})

    @property
    def label(self) -> str:
        return self.method if self.bn_stats is None else f"{self.method} (BN {self.bn_stats})"


def build_series(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[Series]]:
    """Group final ``acc`` records by (benchmark, backbone) -> method families; duplicates are errors."""
    fams: dict[tuple, Series] = {}
    shifts: dict[tuple, str] = {}
    for r in final_records(records):
        lr = r.get("lr")
        if r["method"] in NO_LR_METHODS:
            lr = None
        key = (r["benchmark"], r["backbone"], r["method"], r.get("bn_stats"))
        s = fams.setdefault(key, Series(*key))
        alpha = None if r["alpha"] is None else float(r["alpha"])
        cell = (None if lr is None else float(lr), alpha, r["eval_split"])
        if r["seed"] in s.values[cell]:
            raise RecordsError(
                f"{r.get('_where')}: duplicate measurement of {r['method']} {r['benchmark']}/{r['backbone']} "
                f"split {r['eval_split']} lr {lr} alpha {alpha} seed {r['seed']} (also at {s.where[cell + (r['seed'],)]}); "
                "remove one of the runs"
            )
        s.values[cell][r["seed"]] = r["value"]
        s.where[cell + (r["seed"],)] = r.get("_where", "?")
        s.shifts[r["eval_split"]] = r["shift"]
        sk = (r["benchmark"], r["eval_split"])
        if shifts.setdefault(sk, r["shift"]) != r["shift"]:
            raise RecordsError(f"{r.get('_where')}: split {r['eval_split']} is tagged {r['shift']!r} here and "
                               f"{shifts[sk]!r} elsewhere")
    groups: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for s in fams.values():
        groups[(s.benchmark, s.backbone)].append(s)
    for g in groups.values():
        g.sort(key=lambda s: (METHOD_ORDER.index(s.method) if s.method in METHOD_ORDER else 99, s.method,
                              s.bn_stats or ""))
    return dict(sorted(groups.items()))


def ood_splits(group: Sequence[Series]) -> list[str]:
    """OOD splits measured in a group, in a stable order."""
    found = []
    for s in group:
        for split, shift in s.shifts.items():
            if shift == "ood" and split not in found:
                found.append(split)
    try:  # the benchmark's declared order when it is registered (imagenet: v2, r, sketch, ...)
        from lpft.vision.data import get_benchmark

        order = get_benchmark(group[0].benchmark).ood_splits if group else []
    except (ImportError, ValueError):
        order = []
    return sorted(found, key=lambda s: (order.index(s) if s in order else len(order), s))


def selection_alpha(s: Series, lr) -> float | None:
    """The alpha whose ID-val accuracy picks WiSE-FT's learning rate: the fine-tuned end (largest alpha)."""
    alphas = [a for a in s.alphas(lr) if a is not None]
    return max(alphas) if alphas else None


def select_lr(s: Series) -> tuple[float | None, dict]:
    """Pick the learning rate with the best mean ID-val accuracy over seeds (LP-FT; never OOD).

    Returns:
        ``(lr, {lr: mean id_val acc})``. With a single learning rate no ID-val record is needed.

    Raises:
        RecordsError: several learning rates but one of them has no ``id_val`` accuracy.
    """
    lrs = s.lrs
    scores = {}
    for lr in lrs:
        vals = s.seeds_of(lr, selection_alpha(s, lr), "id_val")
        if vals:
            scores[lr] = statistics.fmean(vals.values())
        elif len(lrs) > 1:
            raise RecordsError(
                f"{s.method} on {s.benchmark}/{s.backbone}: learning rate {lr} has no id_val accuracy record "
                f"(epoch null), so the learning rate cannot be selected by ID validation; runs: "
                f"{sorted({w.rsplit(':', 1)[0] for k, w in s.where.items() if k[0] == lr})}"
            )
    if len(lrs) == 1:
        return lrs[0], scores
    best = max(lrs, key=lambda lr: (scores[lr], -lrs.index(lr)))
    return best, scores


# ----------------------------------------------------------------------------------------------- rows
@dataclass
class Cell:
    agg: Agg | None
    alpha: float | None = None  # the oracle's alpha for this column
    published: dict | None = None

    @property
    def diff(self) -> float | None:
        return difference(None if self.agg is None else 100 * self.agg.mean, self.published)


@dataclass
class Row:
    benchmark: str
    backbone: str
    method: str
    label: str
    bn_stats: str | None
    lr: float | None
    lr_scores: dict
    alpha: float | str | None  # None, a number, or "oracle"
    cells: dict[str, Cell]


def per_seed(s: Series, lr, alpha, split: str, oods: Sequence[str]) -> dict[int, float]:
    if split != "ood_avg":
        return dict(s.seeds_of(lr, alpha, split))
    per = [s.seeds_of(lr, alpha, o) for o in oods]
    seeds = set.intersection(*(set(p) for p in per)) if per else set()
    return {seed: statistics.fmean(p[seed] for p in per) for seed in sorted(seeds)}


def columns(group: Sequence[Series]) -> list[str]:
    """``id_test``, the OOD splits, and ``ood_avg`` when there are at least two OOD splits."""
    oods = ood_splits(group)
    return ["id_test"] + oods + (["ood_avg"] if len(oods) >= 2 else [])


def build_rows(groups: dict[tuple[str, str], list[Series]], oracle: bool = True) -> list[Row]:
    """Rows of the comparison table: one per method (WiSE-FT: alpha 0.5 and the per-column oracle)."""
    rows = []
    for (bench, bb), group in groups.items():
        oods, cols = ood_splits(group), columns(group)

        def pub(method, split, alpha=None):
            return lookup(method, bb, bench, split, alpha=alpha)

        for s in group:
            lr, scores = select_lr(s)
            if s.method != "wiseft":
                cells = {}
                for c in cols:
                    v = per_seed(s, lr, None, c, oods)
                    cells[c] = Cell(aggregate(list(v.values())) if v else None, published=pub(s.method, c))
                rows.append(Row(bench, bb, s.method, s.label, s.bn_stats, lr, scores, None, cells))
                continue
            alphas = [a for a in s.alphas(lr) if a is not None]
            if 0.5 in alphas:
                cells = {}
                for c in cols:
                    v = per_seed(s, lr, 0.5, c, oods)
                    cells[c] = Cell(aggregate(list(v.values())) if v else None, published=pub("wiseft", c, 0.5))
                rows.append(Row(bench, bb, "wiseft", f"{s.label} α=0.5", s.bn_stats, lr, scores, 0.5, cells))
            if oracle and alphas:
                cells = {}
                for c in cols:
                    best = None
                    for a in alphas:
                        v = per_seed(s, lr, a, c, oods)
                        if v:
                            agg = aggregate(list(v.values()))
                            if best is None or agg.mean > best[1].mean:
                                best = (a, agg)
                    cells[c] = Cell(best and best[1], alpha=best and best[0], published=pub("wiseft", c, "oracle"))
                rows.append(Row(bench, bb, "wiseft", f"{s.label} oracle α", s.bn_stats, lr, scores, "oracle", cells))
    return rows


def build_table(root: str | os.PathLike) -> list[Row]:
    """Read every ``records.jsonl`` under ``root`` and return the table rows (see the module docstring)."""
    return build_rows(build_series(load_records(root)))


# ----------------------------------------------------------------------------------------------- format
def _pct(agg: Agg | None, with_n: int | None = None) -> str:
    if agg is None:
        return ""
    s = f"{100 * agg.mean:.1f}" + (f" ± {100 * agg.ci:.1f}" if agg.ci is not None else "")
    if with_n is not None and agg.n != with_n:
        s += f" (n={agg.n})"
    return s


def _group_rows(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        out[(r.benchmark, r.backbone)].append(r)
    return out


def _lr_text(r: Row) -> str:
    return "" if r.lr is None else f"{r.lr:g}"


def _grid(rows: Sequence[Row], escape=lambda s: s) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body and footnotes of one (benchmark, backbone) block."""
    cols = list(rows[0].cells)
    has_pub = any(c.published for r in rows for c in r.cells.values())
    nmax = max((c.agg.n for r in rows for c in r.cells.values() if c.agg), default=0)
    header = ["method", "lr"]
    for c in cols:
        header += [c] + (["pub", "Δ"] if has_pub else [])
    body, sources = [], []
    for r in rows:
        line = [r.label, _lr_text(r)]
        for c in cols:
            cell = r.cells[c]
            txt = _pct(cell.agg, nmax)
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
    notes = [f"accuracy in %, mean ± 1.645·std/√n over seeds (n={nmax} unless marked); learning rate chosen "
             "by mean ID-val accuracy; oracle α: best α per column on that split (@α), not a fair selection"]
    notes += [f"published: {s}" for s in sources]
    return [escape(h) for h in header], body, notes


def summary_grid(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Methods x benchmarks: ID (``id_test``) and OOD (``ood_avg``, or the only OOD split) per
    (benchmark, backbone), plus the plain average over benchmarks when a row has every benchmark
    (LP-FT's "Ave" column)."""
    groups = _group_rows(rows)
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
                line.append(_pct(c.agg) if c is not None else "")
                if c is not None and c.agg is not None:
                    acc.append(c.agg.mean)
        n = len(groups)
        line += [f"{100 * statistics.fmean(v):.1f}" if len(v) == n else "" for v in (ids, oods)]
        body.append(line)
    return header, body


def format_markdown(rows: Sequence[Row]) -> str:
    """One markdown table per (benchmark, backbone), with published numbers and differences; a
    methods x benchmarks summary first when there are several benchmarks."""
    parts = []
    if len(_group_rows(rows)) > 1:
        header, body = summary_grid(rows)
        parts.append("### summary (ID / OOD average, %)\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join("---" for _ in header) + "|")
        parts += ["| " + " | ".join(b) + " |" for b in body]
        parts.append("")
    for (bench, bb), rs in _group_rows(rows).items():
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
    """One ``tabular`` per (benchmark, backbone) (needs only ``booktabs``)."""
    parts = []
    for (bench, bb), rs in _group_rows(rows).items():
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


CSV_FIELDS = ("benchmark", "backbone", "method", "label", "bn_stats", "lr", "alpha", "split", "mean_pct", "ci_pct",
              "n", "oracle_alpha", "published_pct", "published_ci_pct", "diff_pct", "published_source")


def format_csv(rows: Sequence[Row]) -> str:
    """Long format: one line per (row, column) with full precision."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        for split, c in r.cells.items():
            p = c.published
            w.writerow(dict(
                benchmark=r.benchmark, backbone=r.backbone, method=r.method, label=r.label, bn_stats=r.bn_stats or "",
                lr="" if r.lr is None else repr(r.lr), alpha="" if r.alpha is None else r.alpha, split=split,
                mean_pct="" if c.agg is None else 100 * c.agg.mean,
                ci_pct="" if c.agg is None or c.agg.ci is None else 100 * c.agg.ci,
                n="" if c.agg is None else c.agg.n, oracle_alpha="" if c.alpha is None else c.alpha,
                published_pct="" if p is None else p["value"],
                published_ci_pct="" if p is None or p.get("ci") is None else p["ci"],
                diff_pct="" if c.diff is None else c.diff, published_source="" if p is None else citation(p)))
    return buf.getvalue()


FORMATS = {"markdown": format_markdown, "latex": format_latex, "csv": format_csv}


def format_table(rows: Sequence[Row], fmt: str = "markdown") -> str:
    """Render rows as ``markdown``, ``latex`` or ``csv``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt](rows)


def main(argv: list[str] | None = None) -> str:
    """CLI: ``python -m lpft.vision.table --runs DIR [--format markdown|latex|csv] [--out FILE]``."""
    ap = argparse.ArgumentParser(prog="python -m lpft.vision.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs", help="directory holding <run_id>/records.jsonl (default runs/)")
    ap.add_argument("--format", default="markdown", choices=sorted(FORMATS))
    ap.add_argument("--out", default=None, help="also write the table to this file (atomically)")
    args = ap.parse_args(argv)
    text = format_table(build_table(args.runs), args.format)
    if args.out:
        from lpft.vision.io import write_text_atomic

        write_text_atomic(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
