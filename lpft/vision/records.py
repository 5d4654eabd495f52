"""Tidy result records: one JSON object per measurement, one line each in ``records.jsonl``.

Every record has at least the fields of :data:`REQUIRED_FIELDS`:

==============  =================================================================================
``run_id``      the run directory name
``method``      ``lp`` | ``ft`` | ``lpft`` | ``wiseft`` | ``zeroshot`` | ``flyp`` | ``soup``
``backbone``    registered backbone name (``efficientnet_lite0``, ``clip_vit_b16``, ...)
``benchmark``   registered benchmark name (``digits``, ``living17``, ...)
``eval_split``  the split evaluated (``id_val``, ``id_test``, ``ood_test``, ``imagenet_r``, ...)
``shift``       ``"id"`` or ``"ood"``
``metric``      ``acc`` (top-1 accuracy in [0, 1]), ``ece`` / ``nll`` (calibration), ``loss``, ``feature_*``
``value``       a float
``seed``        the run's seed
``alpha``       the WiSE-FT mixing coefficient; ``None`` for every other method
==============  =================================================================================

Optional fields used downstream: ``lr`` (the fine-tuning learning rate, ``None`` for LP / zero-shot),
``epoch`` (``None`` for the selected model), ``bn_stats`` (WiSE-FT on BatchNorm backbones:
``"interpolated"`` or ``"recomputed"``), ``C`` (LP regularisation), ``preset``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

REQUIRED_FIELDS = (
    "run_id",
    "method",
    "backbone",
    "benchmark",
    "eval_split",
    "shift",
    "metric",
    "value",
    "seed",
    "alpha",
)
SHIFTS = ("id", "ood")


class RecordsError(ValueError):
    """A records file is malformed; the message names the file and line."""


def validate_record(rec: dict[str, Any], where: str = "record") -> dict[str, Any]:
    """Check one record's fields and types; raise :class:`RecordsError` naming ``where``."""
    if not isinstance(rec, dict):
        raise RecordsError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        raise RecordsError(f"{where}: missing field(s) {missing}; every record needs {list(REQUIRED_FIELDS)}")
    if rec["shift"] not in SHIFTS:
        raise RecordsError(f"{where}: shift must be 'id' or 'ood', got {rec['shift']!r}")
    v = rec["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordsError(f"{where}: value must be a finite number, got {v!r}")
    a = rec["alpha"]
    if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float))):
        raise RecordsError(f"{where}: alpha must be a number or null, got {a!r}")
    if a is not None and rec["method"] != "wiseft":
        raise RecordsError(f"{where}: alpha is set ({a}) but method is {rec['method']!r}, not 'wiseft'")
    return rec


def make_record(**fields: Any) -> dict[str, Any]:
    """Build and validate a record (``alpha`` defaults to ``None``)."""
    fields.setdefault("alpha", None)
    if "value" in fields and hasattr(fields["value"], "item"):
        fields["value"] = fields["value"].item()
    if "value" in fields:
        fields["value"] = float(fields["value"])
    return validate_record(dict(fields))


def append_records(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append validated records to a JSONL file, flushed and fsync'ed line by line.

    Appending whole lines with one ``write`` each means a crash can at worst lose the line being
    written; :func:`read_records` reports a truncated last line with its file and line number.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(validate_record(r), sort_keys=True) + "\n" for r in records]
    with open(path, "a") as fh:
        for line in lines:
            fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate every record of one ``records.jsonl``; errors name the file and line."""
    path = Path(path)
    out = []
    with open(path) as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordsError(f"{path}:{i}: not valid JSON ({e.msg}); the line reads {line[:80]!r}") from None
            out.append(validate_record(rec, where=f"{path}:{i}"))
    return out


def iter_records_files(root: str | os.PathLike) -> Iterator[Path]:
    """Every ``records.jsonl`` under ``root`` (recursively), sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    yield from sorted(root.rglob("records.jsonl"))


def read_all_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of all runs under ``root``."""
    recs: list[dict[str, Any]] = []
    for p in iter_records_files(root):
        recs.extend(read_records(p))
    return recs
