"""Ingredients of a model soup: finding fine-tuning runs, checking they can be averaged, averaging their weights.

Used by :mod:`lpft.vision.soup` (Wortsman et al., ICML 2022, "Model soups"; ``docs/methods.md``, "Model soups").
An ingredient is a complete ``ft`` or ``lpft`` run directory of ``python -m lpft.vision.run``. Ingredients can be
averaged when they share the architecture (backbone, state-dict keys and shapes) and the pretrained
initialisation (``backbone_weights_id``), and can be evaluated together when they share the evaluation data
(benchmark, ``--limit``, selection set, eval transform, precision).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

__all__ = ["INGREDIENT_METHODS", "SAME_FIELDS", "Ingredient", "StateSum", "check_compatible", "check_same_entries",
           "common_config", "config_matches", "find_ingredients", "parse_filters", "uniform_average"]

#: the methods whose runs are soup ingredients (one fine-tuned network each)
INGREDIENT_METHODS = ("ft", "lpft")
#: config fields every ingredient must share: the architecture and initialisation (averaging is meaningful only
#: between networks fine-tuned from one pretrained model) and the evaluation data and precision (the soup is
#: evaluated once, on the ingredients' data)
SAME_FIELDS = ("benchmark", "backbone", "backbone_weights_id", "pretrained", "image_size", "feature_norm", "limit",
               "selection", "fmow_val", "transforms", "precision", "classnames", "dataset_root")
#: config fields that describe where / how a run was launched, never what it computed
_NOT_COMMON = frozenset({"out", "run_id", "resume", "cache_dir", "device", "quiet", "progress", "environment",
                         "distributed", "provenance", "split_info"})


@dataclass
class Ingredient:
    """One fine-tuning run used as a soup ingredient.

    Attributes:
        run_id: the run id of its ``config.json``.
        run_dir: the run directory.
        config: its ``config.json``.
        val_acc: the ID-val accuracy its records give the selected model (None when it recorded none).
    """

    run_id: str
    run_dir: Path
    config: dict[str, Any]
    val_acc: float | None


def parse_filters(items: Sequence[str] | None) -> dict[str, str]:
    """``["benchmark=digits", "lr=0.001"]`` -> ``{"benchmark": "digits", "lr": "0.001"}``.

    Raises:
        ValueError: an item without ``=``, with an empty key, or a key given twice.
    """
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--filter expects KEY=VALUE (e.g. method=ft, lr=0.001), got {item!r}")
        if key in out:
            raise ValueError(f"--filter {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value.strip()
    return out


_MISSING = object()


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``; a dotted key reads nested fields (``split_info.id_val.size``)."""
    cur: Any = config
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _value_matches(value: Any, text: str) -> bool:
    if value is None:
        return text.lower() in ("none", "null")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):  # numbers as numbers: lr=0.001 matches 1e-3
        try:
            return math.isclose(float(text), float(value), rel_tol=1e-12, abs_tol=0.0)
        except ValueError:
            return False
    if isinstance(value, (list, tuple)):
        return text == ",".join(str(v) for v in value)
    return str(value) == text


def config_matches(config: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """Whether ``config`` holds every ``KEY=VALUE`` of ``filters`` (numbers compared as numbers, ``none`` / ``null``
    for a missing value, ``true`` / ``false`` for booleans, lists as comma-separated items)."""
    for key, text in filters.items():
        value = _lookup(config, key)
        if value is _MISSING or not _value_matches(value, text):
            return False
    return True


def _selected_val_acc(records_path: Path) -> float | None:
    """The ID-val accuracy of the model a run selected: its ``acc`` record on ``id_val`` with ``epoch`` and
    ``stage`` null (LP-FT's LP stage is not the run's model)."""
    from lpft.vision.records import read_records

    for r in read_records(records_path):
        if (r["metric"] == "acc" and r["eval_split"] == "id_val" and r.get("epoch") is None
                and r.get("stage") is None):
            return float(r["value"])
    return None


def find_ingredients(runs: str | Path, filters: Mapping[str, str]) -> list[Ingredient]:
    """The complete ``ft`` / ``lpft`` runs under ``runs`` (searched recursively) whose ``config.json`` matches
    every filter, sorted by run id.

    Raises:
        FileNotFoundError: ``runs`` does not exist or holds no run directory.
        ValueError: a filter key that no run's config has (a typo), two runs with one run id, or fewer than two
            ingredients (the message says which matching runs were left out and why).
    """
    root = Path(runs)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    configs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(root.rglob("config.json")):
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); remove or repair that run directory") from None
        if isinstance(cfg, dict) and "method" in cfg and "backbone" in cfg:
            configs.append((path.parent, cfg))
    if not configs:
        raise FileNotFoundError(f"no run directory (<run_id>/config.json) under {root}")
    unknown = [k for k in filters if all(_lookup(c, k) is _MISSING for _, c in configs)]
    if unknown:
        raise ValueError(f"--filter key(s) {unknown} appear in no run's config.json under {root}; keys are config "
                         f"fields such as benchmark, backbone, method, lr, seed, epochs (dotted for nested fields)")
    found: list[Ingredient] = []
    skipped: list[str] = []
    for run_dir, cfg in configs:
        if not config_matches(cfg, filters):
            continue
        name = str(cfg.get("run_id") or run_dir.name)
        if cfg.get("method") == "soup":  # soups written under --runs are results, not ingredients
            continue
        if cfg.get("method") not in INGREDIENT_METHODS:
            skipped.append(f"{name} (method {cfg.get('method')!r}; ingredients are ft / lpft runs)")
            continue
        if not (run_dir / "records.jsonl").is_file():
            skipped.append(f"{name} (not complete: no records.jsonl)")
            continue
        found.append(Ingredient(name, run_dir, cfg, _selected_val_acc(run_dir / "records.jsonl")))
    ids: dict[str, Path] = {}
    for ing in found:
        if ing.run_id in ids:
            raise ValueError(f"two runs have run id {ing.run_id!r}: {ids[ing.run_id]} and {ing.run_dir}; narrow "
                             f"--runs or --filter so that each ingredient is named once")
        ids[ing.run_id] = ing.run_dir
    if len(found) < 2:
        shown = ", ".join(f"{k}={v}" for k, v in filters.items()) or "(none)"
        left = f"; left out: {'; '.join(skipped)}" if skipped else ""
        raise ValueError(f"a soup needs at least 2 ingredients; {len(found)} complete ft / lpft run(s) under {root} "
                         f"match the filters {shown}{left}")
    if skipped:
        warnings.warn(f"runs matching the filters but not used as ingredients: {'; '.join(skipped)}", stacklevel=2)
    return sorted(found, key=lambda i: i.run_id)


def _eval_transform(cfg: Mapping[str, Any]) -> Any:
    tr = cfg.get("transforms_resolved")
    return tr.get("eval") if isinstance(tr, Mapping) else None


def check_compatible(ingredients: Sequence[Ingredient]) -> None:
    """Refuse ingredients that cannot be averaged or evaluated together.

    Every field of :data:`SAME_FIELDS` and the resolved eval transform must agree. Ingredients whose heads started
    from different initialisations (``ft`` runs of different seeds: the random head is drawn from the run's seed;
    ``ft`` mixed with ``lpft``) are allowed with a warning: the paper's ingredients share the whole initialisation.

    Raises:
        ValueError: naming each differing field with the runs holding each value.
    """
    unknown = [i.run_id for i in ingredients if i.config.get("backbone_weights_id") is None]
    if unknown:
        raise ValueError(f"{unknown} record no backbone_weights_id in config.json, so their pretrained "
                         f"initialisation cannot be checked; rerun them with the current lpft")
    problems = []
    for f in SAME_FIELDS + ("eval transform",):
        groups: dict[str, list[str]] = {}
        for ing in ingredients:
            v = _eval_transform(ing.config) if f == "eval transform" else ing.config.get(f)
            groups.setdefault(json.dumps(v, sort_keys=True), []).append(ing.run_id)
        if len(groups) > 1:
            what = "; ".join(f"{v} ({', '.join(runs)})" for v, runs in groups.items())
            problems.append(f"  {f}: {what}")
    if problems:
        raise ValueError("the soup ingredients must share architecture, pretrained initialisation and evaluation "
                         "data, but they differ in:\n" + "\n".join(problems) +
                         "\nNarrow --filter (e.g. backbone=..., benchmark=...) to runs of one pretrained model.")
    methods = {i.config.get("method") for i in ingredients}
    ft_seeds = {i.config.get("seed") for i in ingredients if i.config.get("method") == "ft"}
    if len(methods) > 1 or len(ft_seeds) > 1:
        warnings.warn("the ingredients' heads start from different initialisations (ft draws its random head from "
                      "the run's seed; lpft starts from the LP head): only the pretrained backbone is shared. The "
                      "paper's ingredients share the whole initialisation (Wortsman et al. 2022, Sec. 2)",
                      stacklevel=2)


def check_same_entries(ref_name: str, ref: Mapping[str, torch.Tensor], name: str,
                       state: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError unless two ingredients' state dicts have the same keys, shapes and dtypes."""
    only_ref, only = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    bad = [f"{k}: {tuple(ref[k].shape)} {ref[k].dtype} vs {tuple(state[k].shape)} {state[k].dtype}"
           for k in ref if k in state and (ref[k].shape != state[k].shape or ref[k].dtype != state[k].dtype)]
    if only_ref or only or bad:
        parts = ([f"only in {ref_name}: {only_ref[:5]}"] if only_ref else []) + (
            [f"only in {name}: {only[:5]}"] if only else []) + ([f"shape / dtype differs: {bad[:5]}"] if bad else [])
        raise ValueError(f"ingredients {ref_name} and {name} have different architectures (state-dict entries "
                         f"differ): " + "; ".join(parts))


class StateSum:
    """A running sum of state dicts, for averaging ingredients one at a time (one in memory at once).

    Floating-point entries are summed in float64 and the mean is cast back to the entry's dtype. Integer entries
    (BatchNorm's ``num_batches_tracked``) are not averaged: the first state dict's are kept. BatchNorm running
    means and variances are floating point and are averaged like every weight.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum: dict[str, torch.Tensor] = {}
        self._dtype: dict[str, torch.dtype] = {}
        self._kept: dict[str, torch.Tensor] = {}  # the first state's integer entries

    def add(self, state: Mapping[str, torch.Tensor]) -> "StateSum":
        """Add one state dict (same keys as the first; see :func:`check_same_entries`)."""
        if self.n == 0:
            self._dtype = {k: v.dtype for k, v in state.items()}
            self._kept = {k: v.detach().cpu().clone() for k, v in state.items() if not v.is_floating_point()}
            self._sum = {k: v.detach().cpu().double() for k, v in state.items() if v.is_floating_point()}
        else:
            for k, s in self._sum.items():
                s += state[k].detach().cpu().double()
        self.n += 1
        return self

    def mean(self, extra: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The mean of the states added so far, plus ``extra`` when given (without adding it)."""
        n = self.n + (extra is not None)
        if n == 0:
            raise ValueError("no state dict added")
        out = {}
        for k, dtype in self._dtype.items():
            if k in self._sum:
                total = self._sum[k] if extra is None else self._sum[k] + extra[k].detach().cpu().double()
                out[k] = (total / n).to(dtype)
            else:
                out[k] = self._kept[k].clone()
        return out


def uniform_average(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform soup of ``states``: the mean of every floating-point entry, integer entries from the first."""
    acc = StateSum()
    for s in states:
        acc.add(s)
    return acc.mean()


def common_config(ingredients: Sequence[Ingredient]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(common, varying)``: the config fields every ingredient holds with one value, and for the others
    ``{field: {run_id: value}}`` (bookkeeping fields such as ``out`` and ``device`` left out)."""
    keys = sorted({k for i in ingredients for k in i.config} - _NOT_COMMON)
    common, varying = {}, {}
    for k in keys:
        vals = {i.run_id: i.config.get(k) for i in ingredients}
        if len({json.dumps(v, sort_keys=True) for v in vals.values()}) == 1:
            common[k] = next(iter(vals.values()))
        else:
            varying[k] = vals
    return common, varying
