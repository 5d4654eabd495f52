"""Published numbers to compare against: LP-FT (Kumar et al. 2022) and WiSE-FT (Wortsman et al. 2022).

The numbers live in ``published.json`` next to this module, each entry with its source (paper version,
table, row, column, the paper's backbone). They were copied exactly from the papers; where a paper column
cannot be mapped onto an ``lpft`` split without guessing (LP-FT's single DomainNet and FMoW OOD numbers),
the entry is kept with ``split`` null and never matched, and cells that were not transcribed are listed under
``not_found`` (LP-FT's ImageNet columns; WiSE-FT's ViT-B/16 linear-classifier optimum). An empty comparison
cell is better than a wrong one.

Keys: ``method`` (``lp``, ``ft``, ``lpft``, ``wiseft``, ``zeroshot``), ``backbone`` (an ``lpft`` registry
name; a paper backbone without one, e.g. MoCo-TP or CLIP ViT-L/14@336px, gets a name no registered
backbone has), ``benchmark``, ``split`` (an ``lpft`` split name or ``"ood_avg"``), ``alpha`` (WiSE-FT:
``0.5`` or ``"oracle"`` for the per-column optimum, else null) and ``variant``:

* ``null``: the default row for the key. For WiSE-FT that is the end-to-end (E2E) variant, where theta_1 is
  the whole fine-tuned network (Table 1 for ViT-L/14@336px, Table 8 for ViT-B/16);
* ``"LC"``: WiSE-FT's linear-classifier variant (theta_0 and theta_1 differ in the head only; Table 1 for
  ViT-L/14@336px, Table 5 for ViT-B/16 at alpha = 0.5). ``lpft.vision.table`` compares runs with
  ``wiseft_finetune == "linear"`` against these rows only;
* ``"clip_paper"``, ``"table8"``: the paper's other rows with the same key (CLIP's own LC and zero-shot numbers;
  Table 8's repeat of the ViT-L/14@336px rows).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

_KEY_FIELDS = ("method", "backbone", "benchmark", "split", "alpha", "variant")
_REQUIRED = ("paper", "table", "column", "backbone_paper", "value") + _KEY_FIELDS


def _key(e: dict[str, Any]) -> tuple:
    return tuple(e[f] for f in _KEY_FIELDS)


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Any], dict[tuple, dict[str, Any]]]:
    text = resources.files("lpft.vision").joinpath("published.json").read_text()
    doc = json.loads(text)
    index: dict[tuple, dict[str, Any]] = {}
    for i, e in enumerate(doc["entries"]):
        missing = [f for f in _REQUIRED if f not in e]
        if missing:
            raise ValueError(f"published.json entry {i}: missing field(s) {missing}")
        if e["split"] is None:
            continue  # kept for the record, never compared (see the entry's note)
        k = _key(e)
        if k in index:
            raise ValueError(f"published.json entries {index[k]['_index']} and {i} share the key {k}")
        index[k] = dict(e, _index=i)
    return doc, index


def published_entries() -> list[dict[str, Any]]:
    """Every entry of ``published.json`` (copies), including the unmapped ones (``split`` null)."""
    doc, _ = _load()
    return [dict(e) for e in doc["entries"]]


def lookup(
    method: str,
    backbone: str,
    benchmark: str,
    split: str,
    *,
    alpha: float | str | None = None,
    variant: str | None = None,
) -> dict[str, Any] | None:
    """The published accuracy for one table cell, or ``None`` when the papers have none.

    Args:
        method: ``lp``, ``ft``, ``lpft``, ``wiseft`` or ``zeroshot``.
        backbone: ``lpft`` backbone name; only entries measured with that backbone match (a number for a
            different backbone is not a comparison).
        benchmark: benchmark name (``living17``, ``imagenet``, ...).
        split: split name (``id_test``, ``ood_test``, ``imagenet_r``, ...) or ``"ood_avg"``.
        alpha: for WiSE-FT, ``0.5`` or ``"oracle"`` (the per-column optimum); ``None`` otherwise.
        variant: ``None`` for the paper's default row; see the module docstring for the others.

    Returns:
        A copy of the entry (``value`` in percent, ``ci`` the paper's 90% interval or ``None``,
        ``paper``, ``table``, ``column``, ``backbone_paper``, optional ``note``), or ``None``.
    """
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        alpha = float(alpha)
    _, index = _load()
    e = index.get((method, backbone, benchmark, split, alpha, variant))
    if e is None:
        return None
    out = dict(e)
    out.pop("_index", None)
    return out


def difference(ours_percent: float | None, entry: dict[str, Any] | None) -> float | None:
    """``ours - published`` in percentage points, or ``None`` when either side is missing."""
    if ours_percent is None or entry is None:
        return None
    return float(ours_percent) - float(entry["value"])


def citation(entry: dict[str, Any]) -> str:
    """A short human-readable source, e.g. ``"Kumar et al. 2022 (LP-FT), Table 1, Liv-17, MoCo-v2 ResNet-50"``."""
    return f"{entry['paper']}, {entry['table']}, {entry['column']}, {entry['backbone_paper']}"
