"""The same-config rule of :mod:`lpft.vision.table`: the seeds pooled into one table cell must be one experiment.

Runs pooled into one cell (same benchmark, backbone, method, learning rate, selection set and WiSE-FT variant;
different seeds) must hold the same ``config.json`` apart from ``seed``, ``run_id`` and the bookkeeping fields of
:mod:`lpft.vision.rundir` (where the run wrote, on which device, ...). Otherwise a smoke run (``--limit 64``) and a
real run would be averaged into one number without any warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lpft.vision.rundir import BOOKKEEPING_FIELDS, RunConfigMismatch, config_diff, read_config

__all__ = ["CELL_IGNORE", "check_cell", "recipe_digest"]

#: config fields that may differ between the seeds pooled into one cell
CELL_IGNORE = frozenset({"seed", "run_id"}) | BOOKKEEPING_FIELDS


def _soup_seedless(obj: Any, seed: int) -> Any:
    """A soup's config with its seed's name replaced (``...-seed<s>`` ingredient ids, keys and paths,
    ``common.seed``, a ``seed`` filter): the soups of one recipe over seeds differ only there."""
    import re

    pat = re.compile(rf"seed{seed}(?!\d)")
    if isinstance(obj, dict):
        out = {pat.sub("seed<run seed>", k): _soup_seedless(v, seed) for k, v in obj.items()}
        if out.get("seed") in (seed, str(seed)):
            out["seed"] = "<run seed>"
        if "backbone_weights_id" in obj:  # the ingredients' (and so the soup's) per-seed backbone
            out["backbone_weights_id"] = _wid_seedless(obj["backbone_weights_id"], seed)
        return out
    if isinstance(obj, list):
        return [_soup_seedless(v, seed) for v in obj]
    return pat.sub("seed<run seed>", obj) if isinstance(obj, str) else obj


def _seedless(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("method") == "soup" and isinstance(cfg.get("seed"), int):
        cfg = dict(_soup_seedless({k: v for k, v in cfg.items() if k != "seed"}, cfg["seed"]), seed=cfg["seed"])
    # WiSE-FT of another run (--wiseft-from): each seed's source has its own directory, run id and config hash; what
    # the seeds share is the source's method, options and seedless recipe (recipe_sha256)
    src = cfg.get("wiseft_source")
    if isinstance(src, dict):
        keep = {k: src.get(k) for k in ("method", "options", "recipe_sha256")}
        cfg = dict(cfg, wiseft_from=None, wiseft_source=keep)
    # A backbone initialised or pretrained per seed names that seed in its weights id, which legitimately differs
    # between the seeds of one cell: a random init ("random:seed<s>:<digest>") and the offline lab's per-seed
    # pretraining ("simclr:<setting>:seed<s>:<digests>"); the part before the seed must still agree.
    if "backbone_weights_id" in cfg:
        cfg = dict(cfg, backbone_weights_id=_wid_seedless(cfg["backbone_weights_id"], cfg.get("seed")))
    return cfg


def _wid_seedless(wid: Any, seed: Any) -> Any:
    if isinstance(wid, str) and wid.startswith("random:"):
        return "random"
    if isinstance(wid, str) and f":seed{seed}:" in wid:
        return wid.split(f":seed{seed}:")[0] + ":seed<run seed>"
    return wid


def recipe_digest(cfg: dict[str, Any]) -> str:
    """sha256 of a run's ``config.json`` as the same-config rule compares it (without seed, run id, bookkeeping,
    and with a per-seed weights id made seedless): equal for the seeds of one experiment."""
    import hashlib
    import json

    kept = {k: v for k, v in _seedless(cfg).items() if k not in CELL_IGNORE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _leaves(diff: dict[str, tuple[Any, Any]], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Differing dict-valued fields as dotted leaf keys (``split_info.id_test.limit``), not whole dicts."""
    out: dict[str, tuple[Any, Any]] = {}
    for k, (a, b) in diff.items():
        if isinstance(a, dict) and isinstance(b, dict):
            sub = config_diff(a, b, ignore=frozenset())
            out.update(_leaves(sub, f"{prefix}{k}.") if sub else {f"{prefix}{k}": (a, b)})
        else:
            out[f"{prefix}{k}"] = (a, b)
    return out


def _short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def check_cell(name: str, dirs: list[str]) -> list[str]:
    """Enforce the same-config rule on one cell: the run directories ``dirs`` pooled into the cell ``name``.

    Each run's ``config.json`` is compared with the first run's through :func:`lpft.vision.rundir.config_diff`,
    ignoring :data:`CELL_IGNORE`; a randomly initialised backbone's weights id (which names its init seed) counts
    as equal. A cell of one run has nothing to compare.

    Returns:
        Footnotes for the table: when every run lacks ``config.json`` (hand-made records), one note saying the
        check was not possible; otherwise none.

    Raises:
        RunConfigMismatch: the configs differ (the message names both runs and every differing field, nested
            fields as dotted keys), or only some runs of the cell have a ``config.json``.
    """
    if len(dirs) < 2:
        return []  # one run: nothing to compare
    configs = {d: read_config(d) for d in dirs}
    missing = [d for d, c in configs.items() if c is None]
    if missing and len(missing) == len(dirs):
        shown = ", ".join(Path(d).name for d in missing[:3]) + (" ..." if len(missing) > 3 else "")
        return [f"same-config check not possible for {name}: {len(missing)} run(s) without config.json "
                f"({shown})"]
    if missing:
        raise RunConfigMismatch(
            f"the runs pooled into one cell ({name}) cannot be checked for the same config: "
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no config.json while "
            f"{', '.join(d for d in dirs if d not in missing)} do. Move the runs without a config out of --runs."
        )
    ref = dirs[0]
    problems = []
    for d in dirs[1:]:
        diff = config_diff(_seedless(configs[ref]), _seedless(configs[d]), ignore=CELL_IGNORE)
        if diff:
            lines = "\n".join(f"    {k}: {_short(a)} ({Path(ref).name}) != {_short(b)} ({Path(d).name})"
                              for k, (a, b) in _leaves(diff).items())
            problems.append(f"  {ref} vs {d}:\n{lines}")
    if problems:
        raise RunConfigMismatch(
            f"the runs pooled into one cell ({name}) hold different configs; only seed, run_id and bookkeeping "
            f"fields may differ between seeds:\n" + "\n".join(problems) +
            "\nA smoke run and a real run cannot share a table: move one of them out of --runs."
        )
    return []
