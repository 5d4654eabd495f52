"""WiSE-FT of any finished fine-tuning run: ``python -m lpft.vision.run --method wiseft --wiseft-from RUN_DIR``.

Wortsman et al. 2022, Eq. 1, ``theta_alpha = (1 - alpha) theta_0 + alpha theta_1``, where

* ``theta_1`` is the source run's result: ``RUN_DIR/history.json["selected_checkpoint"]`` (relative to ``RUN_DIR``:
  the best or last epoch, SWA / EMA's ``ckpt/averaged.pt``, merged low-rank weights, ...);
* ``theta_0`` is where its fine-tuning started: the pretrained backbone its ``config.json`` names plus the head
  fine-tuning started from, ``RUN_DIR/init_head.pt`` (``{"weight", "bias"}``: FT's random head, LP-FT's LP head);
  for a FLYP source the zero-shot CLIP model, both towers, and every alpha classifies with the zero-shot head of
  its own interpolated text tower (:class:`lpft.vision.flyp.FlypModel`).

Nothing trains. The run takes over the source's model and data settings (:data:`INHERITED`, where not given; a given
value that differs is an error, ``--benchmark`` and ``--seed`` included); its learning rate is the source's, so
tables choose among sources by their ID validation accuracy (alpha = 1). Records carry ``wiseft_source`` (the
source's method and options), so tables keep these runs apart from plain WiSE-FT; ``config.json`` carries
``wiseft_source`` (the source's directory, run id, ``config.json`` sha256 and seedless recipe digest). The default run
id is ``<source run id>-wiseft``. Evaluation is :func:`lpft.vision.methods.evaluate_alphas` (BatchNorm variants
included). This module imports no torch at import time (:func:`lpft.vision.run.run` calls :func:`inherit_source`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lpft.vision.config import RunConfig
    from lpft.vision.context import RunContext

__all__ = ["INHERITED", "inherit_source", "load_endpoints", "read_source", "run_wiseft_from", "source_label"]

#: settings taken from the source's config.json when not given (a given value must equal the source's); the runner
#: leaves ``benchmark`` and ``seed`` None under --wiseft-from so that they are inherited too
INHERITED = ("benchmark", "seed", "backbone", "weights", "pretrained", "image_size", "feature_norm", "transforms",
             "selection", "fmow_val", "limit", "templates", "precision", "lr")
#: taken over when not given, may differ when given (they do not change what is computed)
BOOKKEEPING = ("eval_batch_size", "data_root")


def read_source(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(resolved run dir, its config.json)`` of a complete run with fine-tuned weights.

    Raises:
        FileNotFoundError: no such directory, not a run directory, or an incomplete run (no ``records.jsonl``).
        ValueError: the run trained no network (``lp``, ``zeroshot``) or is itself a WiSE-FT run.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--wiseft-from {path}: no such run directory (expected <out>/<run_id>/ of a finished "
                                f"python -m lpft.vision.run)")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"--wiseft-from {path}: not a run directory (no config.json, which "
                                f"python -m lpft.vision.run writes first)")
    if not (run_dir / "records.jsonl").is_file():
        raise FileNotFoundError(f"--wiseft-from {path}: the run is not complete (no records.jsonl, written last); "
                                f"finish it with python -m lpft.vision.run ... --resume")
    cfg = json.loads((run_dir / "config.json").read_text())
    method = cfg.get("method")
    if method in ("lp", "zeroshot"):
        raise ValueError(f"--wiseft-from {path}: a {method!r} run trains no network, so there are no fine-tuned "
                         f"weights to interpolate (use --method wiseft without --wiseft-from)")
    if method == "wiseft":
        raise ValueError(f"--wiseft-from {path} is a WiSE-FT run already; its records hold every alpha. Point "
                         f"--wiseft-from at a fine-tuning run (ft, lpft, flyp, ...)")
    return run_dir.resolve(), cfg


def source_label(info: dict[str, Any]) -> str:
    """The records' ``wiseft_source``: the source method and its fine-tuning options, e.g. ``ft[l2sp_alpha=0.01]``."""
    return info["method"] + (f"[{info['options']}]" if info.get("options") else "")


def _source_info(run_dir: Path, src: dict[str, Any]) -> dict[str, Any]:
    from lpft.vision.records import read_records
    from lpft.vision.tablecheck import recipe_digest

    final = [r for r in read_records(run_dir / "records.jsonl") if r.get("epoch") is None and r.get("stage") is None]
    return {"run_dir": str(run_dir), "run_id": src.get("run_id") or run_dir.name, "method": src["method"],
            "options": next((r.get("options") for r in final if r.get("options")), None),
            "config_sha256": hashlib.sha256((run_dir / "config.json").read_bytes()).hexdigest(),
            "recipe_sha256": recipe_digest(src)}


def inherit_source(cfg: "RunConfig") -> tuple["RunConfig", list[str]]:
    """Complete an unresolved ``--wiseft-from`` config from the source run (before :func:`resolve_config`).

    Returns:
        ``(config, names of the fields taken from the source)``; ``config.wiseft_source`` is filled.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_source`; a setting that differs from the source's (every
            differing field is named, with both values).
    """
    from lpft.vision.rundir import config_diff

    if cfg.method != "wiseft":
        raise ValueError(f"--wiseft-from applies to --method wiseft (WiSE-FT of a finished run), not {cfg.method!r}")
    run_dir, src = read_source(cfg.wiseft_from)
    cfg = dataclasses.replace(cfg)
    inherited, bad = [], {}
    for k in (*INHERITED, *BOOKKEEPING):
        mine, theirs = getattr(cfg, k), src.get(k)
        if mine is None:
            if theirs is not None:
                setattr(cfg, k, theirs)
                inherited.append(k)
        elif k in BOOKKEEPING:
            if k == "data_root" and src.get("dataset_root") and Path(mine).resolve() != Path(src["dataset_root"]):
                bad[k] = (mine, src["dataset_root"])  # a benchmark defined by its root (folder): the dataset itself
        elif config_diff({k: theirs}, {k: mine}, ignore=frozenset()):
            bad[k] = (mine, theirs)
    if bad:
        lines = "\n".join(f"  {k}: {a!r} here, {b!r} in the source" for k, (a, b) in bad.items())
        raise ValueError(f"--wiseft-from {cfg.wiseft_from}: the WiSE-FT run must use the source run's settings; "
                         f"differing:\n{lines}\nLeave these options out to take the source's values")
    cfg.wiseft_source = _source_info(run_dir, src)
    return cfg, inherited


def _check_built(ctx: "RunContext", src: dict[str, Any]) -> None:
    """The pretrained weights, classes, eval transform and split sizes the run built equal the source's."""
    got = {"backbone_weights_id": ctx.backbone.weights_id, "classnames": [str(c) for c in ctx.bench.classnames],
           "eval transform": repr(ctx.train_set_eval.transform),
           "split sizes": {s: i.get("size") for s, i in ctx.cfg.split_info.items()}}
    want = {"backbone_weights_id": src.get("backbone_weights_id"), "classnames": src.get("classnames"),
            "eval transform": (src.get("transforms_resolved") or {}).get("eval"),
            "split sizes": {s: i.get("size") for s, i in (src.get("split_info") or {}).items()}}
    bad = [k for k in got if want[k] is not None and got[k] != want[k]]
    if bad:
        lines = "\n".join(f"  {k}: {got[k]!r} here, {want[k]!r} in the source" for k in bad)
        raise ValueError(f"--wiseft-from {ctx.cfg.wiseft_from}: the rebuilt model or data differ from the source run's "
                         f"(weights or data changed since it ran?):\n{lines}")


def load_endpoints(ctx: "RunContext", run_dir: Path, src: dict[str, Any]):
    """``(model, theta_0, theta_1)`` of the source run, rebuilt on ``ctx`` (CPU state dicts with equal keys).

    Raises:
        FileNotFoundError: ``history.json``, the selected checkpoint or ``init_head.pt`` is missing.
        ValueError: the run trained no epoch, or its checkpoint does not fit the rebuilt model.
    """
    import torch

    from lpft.vision.context import new_classifier
    from lpft.vision.rundir import load_checkpoint

    hist_path = run_dir / "history.json"
    if not hist_path.is_file():
        raise FileNotFoundError(f"{hist_path} not found: it names the source run's selected checkpoint")
    hist = json.loads(hist_path.read_text())
    rel = hist.get("selected_checkpoint")
    if not rel:
        raise ValueError(f"{run_dir} trained no epoch (selected_checkpoint is null): no fine-tuned weights")
    path = run_dir / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the checkpoint {hist_path.name} selected")
    ck = load_checkpoint(path, fallback=False)
    theta1 = ck["model"] if isinstance(ck, dict) and "model" in ck else ck
    if isinstance(ck, dict) and "epoch" in ck and hist.get("best_epoch") not in (None, int(ck["epoch"])):
        raise ValueError(f"{path} holds epoch {ck['epoch']}, but {hist_path.name} selected epoch {hist['best_epoch']}")
    if src["method"] == "flyp":
        from lpft.vision.flyp import build_flyp_model

        model = build_flyp_model(ctx)  # the zero-shot CLIP, both towers
    else:
        head_path = run_dir / "init_head.pt"
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path} not found: fine-tuning runs save the head they started from there "
                                    f"(theta_0 = the pretrained backbone + that head); rerun {run_dir.name}")
        head = torch.load(head_path, map_location="cpu", weights_only=True)
        if not isinstance(head, dict) or "weight" not in head or "bias" not in head:
            raise ValueError(f"{head_path} does not hold a head ({{'weight', 'bias'}})")
        model = new_classifier(ctx, head["weight"].float(), head["bias"].float())
    theta0 = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    only0, only1 = sorted(set(theta0) - set(theta1)), sorted(set(theta1) - set(theta0))
    shapes = [k for k in theta0 if k in theta1 and tuple(theta0[k].shape) != tuple(theta1[k].shape)]
    if only0 or only1 or shapes:
        raise ValueError(f"{path} does not fit the rebuilt {src['method']} model: only in the checkpoint {only1[:4]}, "
                         f"only in the model {only0[:4]}, other shapes {shapes[:4]}")
    return model, theta0, theta1


def run_wiseft_from(ctx: "RunContext") -> list[dict]:
    """Records of every alpha between the source run's start and its result (no training, no history)."""
    from lpft.vision.methods import evaluate_alphas

    run_dir, src = read_source(ctx.cfg.wiseft_from)
    info = ctx.cfg.wiseft_source or {}
    if info.get("config_sha256") != hashlib.sha256((run_dir / "config.json").read_bytes()).hexdigest():
        raise ValueError(f"{run_dir / 'config.json'} changed since this run was configured; start it again")
    _check_built(ctx, src)
    model, theta0, theta1 = load_endpoints(ctx, run_dir, src)
    return evaluate_alphas(ctx, model, theta0, theta1, wiseft_source=source_label(info))
