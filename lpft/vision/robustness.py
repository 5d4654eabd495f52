"""Effective robustness (Taori et al. 2020) against an independent baseline of standard models.

Taori et al., "Measuring Robustness to Natural Distribution Shifts in Image Classification" (NeurIPS 2020), and
WiSE-FT (Wortsman et al. 2022) after them, fit a line ``logit(ood) = slope * logit(id) + intercept`` to a testbed
of standard models (trained on the ID data without any robustness intervention) and call a model's OOD accuracy
above that line, at the same ID accuracy, its *effective robustness*. The line must come from models other than
the ones judged: a least-squares line through the judged points makes their residuals cancel on average.

This module reads such a testbed from a CSV (:func:`load_baseline`), fits the line (:func:`fit_logit_line`) and
computes effective robustness (:func:`effective_robustness`). All accuracies are fractions in (0, 1).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["EPS", "LogitLine", "fit_logit_line", "Baseline", "load_baseline", "baseline_line",
           "effective_robustness", "logit", "sigmoid"]

# accuracies are clipped to [EPS, 1 - EPS] before the logit: a run at 0% or 100% has none. Baseline models must
# lie strictly inside (0, 1) (load_baseline checks), and for them the clip only matters beyond 99.9999%.
EPS = 1e-6


def logit(p):
    """``log(p / (1 - p))`` of accuracies (fractions) clipped to ``[EPS, 1 - EPS]``."""
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(z):
    """Inverse of :func:`logit`."""
    return 1 / (1 + np.exp(-np.asarray(z, dtype=float)))


@dataclass(frozen=True)
class LogitLine:
    """``logit(ood) = slope * logit(id) + intercept``, fitted to ``n`` points from ``source``: ``"baseline"``
    (independent standard models) or ``"runs"`` (the plotted runs themselves)."""

    slope: float
    intercept: float
    n: int
    source: str

    def predict(self, id_acc: float) -> float:
        """The line's OOD accuracy (fraction) at ID accuracy ``id_acc`` (fraction)."""
        return float(sigmoid(self.slope * logit(id_acc) + self.intercept))

    def residual(self, id_acc: float, ood_acc: float) -> float:
        """``ood_acc`` minus the line's prediction at ``id_acc`` (fractions)."""
        return float(ood_acc) - self.predict(id_acc)


def fit_logit_line(id_accs: Sequence[float], ood_accs: Sequence[float], source: str) -> LogitLine:
    """Least-squares line through ``(logit(id), logit(ood))`` (accuracies as fractions).

    Raises:
        ValueError: fewer than 2 points, or all at one ID accuracy (no line is defined).
    """
    if len(id_accs) != len(ood_accs) or len(id_accs) < 2 or len({round(float(x), 12) for x in id_accs}) < 2:
        raise ValueError(f"a logit-linear fit needs at least 2 points with different ID accuracies, got "
                         f"{len(id_accs)} point(s) at ID {sorted(set(map(float, id_accs)))}")
    slope, icpt = np.polyfit(logit(id_accs), logit(ood_accs), 1)
    return LogitLine(float(slope), float(icpt), len(id_accs), source)


@dataclass(frozen=True)
class Baseline:
    """Independent standard models from a CSV: ``points[split]`` = ``[(model, id_acc, ood_acc), ...]``
    (fractions); the key ``None`` holds rows that apply to every OOD split (the CSV has no ``ood_split``)."""

    path: str
    points: dict[str | None, list[tuple[str, float, float]]]

    def for_split(self, split: str) -> list[tuple[str, float, float]]:
        return self.points.get(None, self.points.get(split, []))

    @property
    def splits(self) -> list[str]:
        return sorted(k for k in self.points if k is not None)


def load_baseline(path: str | os.PathLike) -> Baseline:
    """Read a baseline CSV of independent standard models (Taori et al. 2020's "testbed").

    Columns: ``model`` (a name), ``id_acc`` (accuracy on the same ID test set as the runs' ``id_test``),
    ``ood_acc`` and optionally ``ood_split`` (the ``lpft`` split name the OOD accuracy is for; without this
    column every row applies to every OOD split). Accuracies are all fractions in [0, 1] or all percentages: a
    file with any value above 1 is read as percent. Other columns are ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column, a value that is not a number strictly between 0% and 100%, an empty
            ``ood_split``, a repeated (model, ood_split), or a split with fewer than 2 models at different ID
            accuracies; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline CSV {path} not found (expected columns model, id_acc, ood_acc"
                                f"[, ood_split])")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("model", "id_acc", "ood_acc") if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected model, id_acc, ood_acc[, ood_split], "
                             f"got {header}")
        raw = []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            vals = []
            for col in ("id_acc", "ood_acc"):
                try:
                    vals.append(float(row[col]))
                except ValueError:
                    raise ValueError(f"{path}:{line}: {col} must be a number, got {row[col]!r}") from None
                if not math.isfinite(vals[-1]):
                    raise ValueError(f"{path}:{line}: {col} must be finite, got {row[col]!r}")
            if not row["model"]:
                raise ValueError(f"{path}:{line}: empty model name")
            split = row.get("ood_split") if "ood_split" in header else None
            if split == "":
                raise ValueError(f"{path}:{line}: empty ood_split (name the lpft OOD split, e.g. imagenet_r)")
            raw.append((line, row["model"], split, *vals))
    if not raw:
        raise ValueError(f"{path}: no models (the file has a header but no rows)")
    scale = 100.0 if max(max(r[3], r[4]) for r in raw) > 1 else 1.0
    points: dict[str | None, list[tuple[str, float, float]]] = {}
    seen: dict[tuple, int] = {}
    for line, model, split, i_acc, o_acc in raw:
        for col, v in (("id_acc", i_acc), ("ood_acc", o_acc)):
            if not 0 < v < scale:
                unit = "percent, read as such because a value exceeds 1" if scale == 100 else "a fraction"
                raise ValueError(f"{path}:{line}: {col} = {v:g} must be strictly between 0 and {scale:g} ({unit}); "
                                 f"0% and 100% have no logit")
        if (model, split) in seen:
            raise ValueError(f"{path}:{line}: model {model!r} repeated for split {split} (also line "
                             f"{seen[(model, split)]})")
        seen[(model, split)] = line
        points.setdefault(split, []).append((model, i_acc / scale, o_acc / scale))
    for split, pts in points.items():
        try:
            fit_logit_line([p[1] for p in pts], [p[2] for p in pts], "baseline")
        except ValueError as e:
            raise ValueError(f"{path}: split {split or '(all)'}: {e}") from None
    return Baseline(str(path), points)


def baseline_line(baseline: Baseline, split: str) -> LogitLine | None:
    """The logit-linear fit to the baseline models of ``split`` (``None`` when the CSV has none for it)."""
    pts = baseline.for_split(split)
    return fit_logit_line([p[1] for p in pts], [p[2] for p in pts], "baseline") if pts else None


def effective_robustness(id_acc: float, ood_acc: float, line: LogitLine) -> float:
    """Effective robustness (Taori et al. 2020), as a fraction: OOD accuracy above the line fitted to
    independent baseline models, at the same ID accuracy.

    Raises:
        ValueError: ``line`` was fitted through the judged runs themselves (use ``line.residual``).
    """
    if line.source != "baseline":
        raise ValueError("effective robustness needs a line fitted to independent baseline models "
                         "(--baseline CSV); a fit through the runs themselves gives only a residual")
    return line.residual(id_acc, ood_acc)
