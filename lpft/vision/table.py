"""Paper-style results tables from ``records.jsonl`` files, next to the published numbers.

Protocol (Kumar et al. 2022, LP-FT, Sec. 4 and App. B):

* only the selected model of each run counts (records with ``epoch`` null); cells show ``acc`` (or, with
  ``--metric``, ``ece`` / ``nll``), but accuracy alone selects;
* each method's learning rate is chosen by the **mean ID validation accuracy over seeds** (``id_val``),
  never by an OOD split; WiSE-FT's by its fine-tuned endpoint (the largest alpha, normally 1), since
  the whole alpha curve comes from that one fine-tuned model (Wortsman et al. 2022, Sec. 3);
* seeds are aggregated as mean +- 1.645 std / sqrt(n) (90% interval, ddof=1; no interval for n = 1);
* WiSE-FT rows: alpha = 0.5 (the paper's recommended fixed value) and the oracle that picks the best
  alpha per column on the evaluation split itself (Wortsman et al. Table 1), labelled as such.

Same-config rule: the runs pooled into one cell (same benchmark, backbone, method, learning rate, selection
set and WiSE-FT variant; different seeds) must hold the same ``config.json`` apart from ``seed``, ``run_id``
and the bookkeeping fields of :mod:`lpft.vision.rundir`; otherwise :class:`~lpft.vision.rundir.RunConfigMismatch`
names the runs and fields, so a smoke run (``--limit 64``) and a real run never share a table.

Variants: the record fields ``selection`` (``"heldout"``: epoch / C / learning rate chosen on a split held out
from ID train; ``"paper"``: on the set the paper's official code uses) and ``wiseft_finetune``
(``"end_to_end"`` or ``"linear"``: only the head differs between theta_0 and theta_1) split rows; records
without them (older runs) read as ``heldout`` / ``end_to_end``. Each block says which selection set its rows
used (and warns when they mix sets), and linear-head WiSE-FT rows are compared with WiSE-FT's
linear-classifier (``LC``) published rows only.

Columns are ``id_test``, every OOD split, and ``ood_avg`` (the per-seed mean over the OOD splits, when
there are at least two). ``python -m lpft.vision.table --runs DIR [--format markdown|latex|csv]``; rendering is
in :mod:`lpft.vision.tablefmt`.

Bad input never gives a silently wrong table: malformed lines, missing fields, non-finite values,
accuracies outside [0, 1] and duplicated measurements raise :class:`RecordsError` naming file and line.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lpft.vision.published import lookup
from lpft.vision.records import RecordsError, iter_records_files, read_records
from lpft.vision.tablecheck import CELL_IGNORE, check_cell  # noqa: F401  (CELL_IGNORE re-exported)
# re-exported: ``lpft.vision.table`` stays the one import for building and rendering tables
from lpft.vision.tablefmt import (  # noqa: F401
    CSV_FIELDS, FORMATS, WISEFT_LINEAR_NOTE, Z90, Agg, Cell, Row, aggregate, format_csv, format_latex,
    format_markdown, format_table, summary_grid,
)

METHOD_ORDER = ("zeroshot", "lp", "ft", "lpft", "wiseft", "soup")
NO_LR_METHODS = ("lp", "zeroshot")
METRICS = ("acc", "ece", "nll")  # what a table can show (lpft.vision.calibration writes ece and nll)
SELECTIONS = ("heldout", "paper")
WISEFT_FINETUNES = ("end_to_end", "linear")


# ----------------------------------------------------------------------------------------------- loading
def load_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record under ``root``, each with ``_where`` = ``"file:line"`` for error messages and ``_run_dir``
    (the run directory, where ``config.json`` lives).

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
            out.append(dict(rec, _where=f"{path}:{line}", _run_dir=str(Path(path).parent)))
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
    for f, allowed in (("selection", SELECTIONS), ("wiseft_finetune", WISEFT_FINETUNES)):
        if rec.get(f) is not None and rec[f] not in allowed:
            raise RecordsError(f"{where}: {f} must be one of {list(allowed)} (or absent), got {rec[f]!r}")


def variant_of(rec: dict[str, Any]) -> tuple[str, str | None]:
    """``(selection, wiseft_finetune)`` of a record; absent fields (older runs) read as ``heldout`` /
    ``end_to_end``, and ``wiseft_finetune`` is ``None`` for every method but WiSE-FT."""
    sel = rec.get("selection") or "heldout"
    wft = (rec.get("wiseft_finetune") or "end_to_end") if rec["method"] == "wiseft" else None
    return sel, wft


def final_records(records: Iterable[dict[str, Any]], metric: str = "acc") -> list[dict[str, Any]]:
    """Records of the selected models (``epoch`` null) with the given metric, type-checked. Models a method
    reports on the way (``stage``, e.g. LP-FT's LP stage) are left out: LP runs give those cells."""
    out = []
    for r in records:
        if r["metric"] != metric or r.get("epoch") is not None or r.get("stage") is not None:
            continue
        _check(r)
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------- structure
@dataclass
class Series:
    """Final accuracies of one (benchmark, backbone, method, bn_stats, selection, wiseft_finetune) family:
    ``values[(lr, alpha, split)][seed]``."""

    benchmark: str
    backbone: str
    method: str
    bn_stats: str | None
    selection: str = "heldout"
    wiseft_finetune: str | None = None
    soup_variant: str | None = None  # model soups (lpft.vision.soup): "uniform" | "greedy"
    options: str | None = None  # fine-tuning options (lpft.vision.modifiers.modifiers_label): L2-SP, SWA, ...
    values: dict[tuple, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    #: the shown metric's values when it is not accuracy (``ece``, ``nll``); accuracy still selects
    shown: dict[tuple, dict[int, float]] | None = None
    where: dict[tuple, str] = field(default_factory=dict)
    shifts: dict[str, str] = field(default_factory=dict)  # split -> "id" | "ood"
    runs: dict[float | None, set[str]] = field(default_factory=lambda: defaultdict(set))  # lr -> run dirs
    notes: list[str] = field(default_factory=list)

    @property
    def lrs(self) -> list[float | None]:
        return sorted({k[0] for k in self.values}, key=lambda v: (v is None, v or 0.0))

    def alphas(self, lr: float | None) -> list[float | None]:
        return sorted({k[1] for k in self.values if k[0] == lr}, key=lambda v: (v is None, v or 0.0))

    def seeds_of(self, lr, alpha, split, shown: bool = False) -> dict[int, float]:
        """Per-seed accuracy (or, with ``shown``, the shown metric) of one cell."""
        src = self.shown if shown and self.shown is not None else self.values
        return src.get((lr, alpha, split), {})

    @property
    def label(self) -> str:
        """``method``, plus the WiSE-FT variant when it is the linear head, plus the BN statistics."""
        out = self.method + (" (linear head)" if self.wiseft_finetune == "linear" else "") + (
            f" ({self.soup_variant})" if self.soup_variant else "") + (f" [{self.options}]" if self.options else "")
        return out if self.bn_stats is None else f"{out} (BN {self.bn_stats})"


def _cell_name(s: Series, lr) -> str:
    extra = "" if s.wiseft_finetune in (None, "end_to_end") else f", {s.wiseft_finetune} head"
    return (f"{s.method} on {s.benchmark}/{s.backbone}, lr {'n/a' if lr is None else f'{lr:g}'}, "
            f"selection {s.selection}{extra}")


def check_cell_configs(series: Iterable[Series]) -> None:
    """Enforce the same-config rule on every cell (the seeds of one learning rate of one family).

    Each cell's run directories go through :func:`lpft.vision.tablecheck.check_cell`; its footnotes (a cell whose
    runs all lack ``config.json`` cannot be checked) are attached to the family.

    Raises:
        RunConfigMismatch: configs differ (the message names both runs and every differing field), or only
            some runs of a cell have a ``config.json``.
    """
    seen: dict[tuple, list[str]] = {}  # the bn_stats families of one WiSE-FT run share their runs
    for s in series:
        for lr, dirs in sorted(s.runs.items(), key=lambda kv: (kv[0] is None, kv[0] or 0.0)):
            key = (s.benchmark, s.backbone, s.method, s.selection, s.wiseft_finetune, lr, tuple(sorted(dirs)))
            if key not in seen:
                seen[key] = check_cell(_cell_name(s, lr), sorted(dirs))
            s.notes += [n for n in seen[key] if n not in s.notes]


def record_family(r: dict[str, Any]) -> tuple:
    """The family key of a record: the fields of :class:`Series` before its values (what a table row pools)."""
    return (r["benchmark"], r["backbone"], r["method"], r.get("bn_stats"), *variant_of(r),
            r.get("variant") if r["method"] == "soup" else None,  # --wiseft-from runs: "from <source method>"
            f"from {r['wiseft_source']}" if r.get("wiseft_source") else r.get("options"))


def _cell_key(r: dict[str, Any]) -> tuple:
    lr = None if r["method"] in NO_LR_METHODS else r.get("lr")
    return (None if lr is None else float(lr), None if r["alpha"] is None else float(r["alpha"]), r["eval_split"])


def build_series(records: Iterable[dict[str, Any]], metric: str = "acc") -> dict[tuple[str, str], list[Series]]:
    """Group final ``acc`` records by (benchmark, backbone) -> method families; with ``metric`` ``ece`` or
    ``nll`` the families also hold that metric (``Series.shown``), while accuracy still selects.

    Raises:
        RecordsError: a duplicated measurement, or a split tagged ``id`` in one run and ``ood`` in another.
        RunConfigMismatch: the runs pooled into one cell hold different configs (see :func:`check_cell_configs`).
    """
    fams: dict[tuple, Series] = {}
    shifts: dict[tuple, str] = {}
    records = list(records)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    for r in final_records(records):
        key = record_family(r)
        s = fams.setdefault(key, Series(*key))
        cell = _cell_key(r)
        lr, alpha = cell[0], cell[1]
        if r["seed"] in s.values[cell]:
            raise RecordsError(
                f"{r.get('_where')}: duplicate measurement of {r['method']} {r['benchmark']}/{r['backbone']} "
                f"split {r['eval_split']} lr {lr} alpha {alpha} seed {r['seed']} (also at "
                f"{s.where[cell + (r['seed'],)]}); remove one of the runs"
            )
        s.values[cell][r["seed"]] = r["value"]
        s.where[cell + (r["seed"],)] = r.get("_where", "?")
        if r.get("_run_dir"):
            s.runs[cell[0]].add(r["_run_dir"])
        s.shifts[r["eval_split"]] = r["shift"]
        sk = (r["benchmark"], r["eval_split"])
        if shifts.setdefault(sk, r["shift"]) != r["shift"]:
            raise RecordsError(f"{r.get('_where')}: split {r['eval_split']} is tagged {r['shift']!r} here and "
                               f"{shifts[sk]!r} elsewhere")
    if metric != "acc":
        for s in fams.values():
            s.shown = defaultdict(dict)
        for r in final_records(records, metric):
            if (s := fams.get(record_family(r))) is not None:
                s.shown[_cell_key(r)][r["seed"]] = r["value"]
    check_cell_configs(fams.values())
    groups: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for s in fams.values():
        groups[(s.benchmark, s.backbone)].append(s)
    for g in groups.values():
        g.sort(key=lambda s: (METHOD_ORDER.index(s.method) if s.method in METHOD_ORDER else 99, s.method,
                              s.wiseft_finetune or "", s.soup_variant or "", s.options or "", s.bn_stats or "",
                              s.selection))
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
def per_seed(s: Series, lr, alpha, split: str, oods: Sequence[str]) -> dict[int, float]:
    """The shown metric per seed of one cell (``ood_avg``: the per-seed mean over the OOD splits)."""
    if split != "ood_avg":
        return dict(s.seeds_of(lr, alpha, split, shown=True))
    per = [s.seeds_of(lr, alpha, o, shown=True) for o in oods]
    seeds = set.intersection(*(set(p) for p in per)) if per else set()
    return {seed: statistics.fmean(p[seed] for p in per) for seed in sorted(seeds)}


def columns(group: Sequence[Series]) -> list[str]:
    """``id_test``, the OOD splits, and ``ood_avg`` when there are at least two OOD splits."""
    oods = ood_splits(group)
    return ["id_test"] + oods + (["ood_avg"] if len(oods) >= 2 else [])


def build_rows(groups: dict[tuple[str, str], list[Series]], oracle: bool = True, metric: str = "acc") -> list[Row]:
    """Rows of the comparison table: one per method family (WiSE-FT: alpha 0.5 and the per-column oracle).

    ``metric`` is what the cells show (``acc``, ``ece`` or ``nll``; published numbers only for ``acc``); the
    learning rate is chosen by ID-val accuracy whatever is shown, and the oracle alpha is the best per column
    (highest accuracy, lowest ECE / NLL).

    When the families of the whole table mix selection sets, every label carries its set (``[sel. paper]``)
    so that rows of different sets never share a label.
    """
    mixed = len({s.selection for g in groups.values() for s in g}) > 1
    sign = 1.0 if metric == "acc" else -1.0  # higher accuracy is better, lower ECE / NLL
    rows = []
    for (bench, bb), group in groups.items():
        oods, cols = ood_splits(group), columns(group)

        def pub(s: Series, split, alpha=None):
            if metric != "acc" or (s.options or "").startswith("from "):  # WiSE-FT of an FT run is not the papers'
                return None
            # linear-head WiSE-FT is WiSE-FT's LC variant: never compare it with the end-to-end numbers
            variant = "LC" if s.wiseft_finetune == "linear" else None
            return lookup(s.method, bb, bench, split, alpha=alpha, variant=variant)

        for s in group:
            lr, scores = select_lr(s)
            base = s.label + (f" [sel. {s.selection}]" if mixed else "")
            notes = list(s.notes) + ([WISEFT_LINEAR_NOTE] if s.wiseft_finetune == "linear" else [])

            def row(label, alpha, cells):
                return Row(bench, bb, s.method, label, s.bn_stats, lr, scores, alpha, cells, selection=s.selection,
                           wiseft_finetune=s.wiseft_finetune, notes=notes, metric=metric)

            if s.method != "wiseft":
                cells = {}
                for c in cols:
                    v = per_seed(s, lr, None, c, oods)
                    cells[c] = Cell(aggregate(list(v.values())) if v else None, published=pub(s, c))
                rows.append(row(base, None, cells))
                continue
            alphas = [a for a in s.alphas(lr) if a is not None]
            if 0.5 in alphas:
                cells = {}
                for c in cols:
                    v = per_seed(s, lr, 0.5, c, oods)
                    cells[c] = Cell(aggregate(list(v.values())) if v else None, published=pub(s, c, 0.5))
                rows.append(row(f"{base} α=0.5", 0.5, cells))
            if oracle and alphas:
                cells = {}
                for c in cols:
                    best = None
                    for a in alphas:
                        v = per_seed(s, lr, a, c, oods)
                        if v:
                            agg = aggregate(list(v.values()))
                            if best is None or sign * agg.mean > sign * best[1].mean:
                                best = (a, agg)
                    cells[c] = Cell(best and best[1], alpha=best and best[0], published=pub(s, c, "oracle"))
                rows.append(row(f"{base} oracle α", "oracle", cells))
    return rows


def build_table(root: str | os.PathLike, metric: str = "acc") -> list[Row]:
    """Read every ``records.jsonl`` under ``root`` and return the table rows (see the module docstring)."""
    return build_rows(build_series(load_records(root), metric), metric=metric)


def main(argv: list[str] | None = None) -> str:
    """CLI: ``python -m lpft.vision.table --runs DIR [--format markdown|latex|csv] [--out FILE]``."""
    ap = argparse.ArgumentParser(prog="python -m lpft.vision.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs", help="directory holding <run_id>/records.jsonl (default runs/)")
    ap.add_argument("--format", default="markdown", choices=sorted(FORMATS))
    ap.add_argument("--out", default=None, help="also write the table to this file (atomically)")
    ap.add_argument("--metric", default="acc", choices=METRICS,
                    help="what the cells show: accuracy (default), expected calibration error (15 bins) or NLL; "
                         "the learning rate is chosen by ID-val accuracy either way")
    args = ap.parse_args(argv)
    text = format_table(build_table(args.runs, args.metric), args.format)
    if args.out:
        from lpft.vision.io import write_text_atomic

        write_text_atomic(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
