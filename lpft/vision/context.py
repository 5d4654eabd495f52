"""What the methods share: the run context, cached features, linear heads, fine-tuning and evaluation.

Every helper here is rank-aware through :mod:`lpft.vision.distributed`: feature extraction and evaluation are
sharded and gathered (every rank gets the single-process result), and only rank 0 writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lpft.vision import distributed as D
from lpft.vision import engine
from lpft.vision.config import RunConfig
from lpft.vision.io import torch_save_atomic, write_json_atomic
from lpft.vision.records import make_record


@dataclass
class RunContext:
    """Everything a method needs; built by :func:`lpft.vision.run.run`."""

    cfg: RunConfig
    bench: Any  # lpft.vision.data.Benchmark
    backbone: Any  # lpft.vision.backbones.Backbone (pretrained; methods never modify it in place)
    train_set: Any  # id_train with the train transform
    train_set_eval: Any  # id_train with the eval transform (LP without augmentation, BatchNorm re-estimation)
    eval_sets: dict[str, Any]  # every evaluation split (eval transform)
    device: torch.device
    run_dir: Path
    cache_dir: Path
    progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    # -- records ---------------------------------------------------------------------------------------
    def record(self, split: str, metric: str, value: float, **extra: Any) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.method == "wiseft":
            extra.setdefault("wiseft_finetune", cfg.wiseft_finetune)
        from lpft.vision.modifiers import modifiers_label

        if (opts := modifiers_label(cfg)) is not None:
            extra.setdefault("options", opts)
        return make_record(
            run_id=cfg.run_id, method=cfg.method, backbone=cfg.backbone, benchmark=cfg.benchmark,
            eval_split=split, shift=self.bench.splits[split], metric=metric, value=value, seed=cfg.seed,
            lr=extra.pop("lr", cfg.lr), epoch=extra.pop("epoch", None), selection=self.selection_used,
            precision=cfg.precision, **extra,
        )

    @property
    def selection_used(self) -> str:
        """The selection set the data layer actually used (``paper`` falls back to ``heldout`` for benchmarks
        without an official one, e.g. digits)."""
        info = getattr(self.eval_sets.get("id_val"), "split_info", None) or {}
        return info.get("selection", self.cfg.selection)

    def settings(self) -> engine.TrainSettings:
        c = self.cfg
        return engine.TrainSettings(
            lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, optimizer=c.optimizer, momentum=c.momentum,
            weight_decay=c.weight_decay, schedule=c.schedule, warmup_steps=c.warmup_steps or 0,
            grad_clip=c.grad_clip, freeze_bn=bool(c.freeze_bn), seed=c.seed, num_workers=c.num_workers,
            eval_batch_size=c.eval_batch_size, grad_accum=c.grad_accum, precision=c.precision,
            select_epoch=c.select_epoch,
        )

    def write_json(self, name: str, obj: Any) -> None:
        if D.is_main():
            write_json_atomic(self.run_dir / name, obj)

    def save_torch(self, name: str, obj: Any) -> None:
        if D.is_main():
            torch_save_atomic(obj, self.run_dir / name)


# --- features and linear heads ---------------------------------------------------------------------------
def features(ctx: RunContext, split: str, *, train_augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the pretrained backbone on ``split``, cached on disk (a rerun does no forward pass)."""
    from lpft.vision.features import extract_features

    if split == "id_train":
        ds = ctx.train_set if train_augment else ctx.train_set_eval
    else:
        ds = ctx.eval_sets[split]
    c = ctx.cfg
    augmented = split == "id_train" and train_augment
    key = {
        "backbone": c.backbone, "weights": ctx.backbone.weights_id, "benchmark": c.benchmark, "split": split,
        "transform": repr(ds.transform), "limit": c.limit, "n": len(ds), "data_root": c.data_root,
        "selection": c.selection, "fmow_val": c.fmow_val, "precision": c.precision,
        "feature_norm": getattr(ctx.backbone, "feature_norm", None),
        # augmented train features depend on the draw: key them by seed, workers and world size
        "seed": c.seed if augmented else None,
        "workers": c.num_workers if augmented else None,
        "world": D.rank_world()[1] if augmented else None,
    }
    if augmented:
        torch.manual_seed(c.seed + 1_000_003 * D.rank_world()[0])
    return extract_features(ctx.backbone, ds, batch_size=c.eval_batch_size, num_workers=c.num_workers,
                            device=ctx.device, cache_dir=ctx.cache_dir, cache_key=key, progress=ctx.progress,
                            precision=c.precision)


def head_accuracy(ctx: RunContext, split: str, weight: torch.Tensor, bias: torch.Tensor) -> float:
    x, y = features(ctx, split)
    logits = x.float() @ weight.float().T + bias.float()
    return engine.accuracy(logits, y, ctx.eval_sets[split])


def split_records(ctx: RunContext, split: str, logits: torch.Tensor, labels: torch.Tensor, **extra) -> list[dict]:
    """Accuracy, ECE (15 bins) and NLL of one split's logits, after the split's projection."""
    from lpft.vision.calibration import calibration_metrics

    ds = ctx.eval_sets[split]
    acc = engine.accuracy(logits, labels, ds)
    projected = ds.project_logits(logits) if hasattr(ds, "project_logits") else logits
    cal = calibration_metrics(projected, labels)
    return [ctx.record(split, "acc", acc, **dict(extra))] + [
        ctx.record(split, m, v, **dict(extra)) for m, v in cal.items() if v == v and abs(v) != float("inf")]


def fit_linear_probe(ctx: RunContext):
    """LP on cached features, with the protocol's solver (docs/protocols.md, "Linear probe").

    ``lbfgs``: L2 logistic regression over the C grid, C chosen on the selection set (Kumar et al. 2022,
    Sec. 4). ``sgd``: LP-FT's ImageNet torch linear probe, learning rate chosen on the selection set.
    Returns an object with ``weight``, ``bias`` and either ``C`` or ``lr``.
    """
    c = ctx.cfg
    tx, ty = features(ctx, "id_train", train_augment=bool(c.lp_train_augment))
    vx, vy = features(ctx, "id_val")
    val_ds = ctx.eval_sets["id_val"]
    if c.lp_solver == "sgd":
        from lpft.vision.head_training import sgd_linear_probe

        res = sgd_linear_probe(tx, ty, vx, vy, num_classes=ctx.bench.num_classes, lrs=tuple(c.lp_sgd_lrs),
                               epochs=c.lp_sgd_epochs, batch_size=c.batch_size or 128, seed=c.seed,
                               device=ctx.device, val_project=getattr(val_ds, "project_logits", None),
                               progress=ctx.progress and D.is_main())
        ctx.write_json("linear_probe.json", {"solver": "sgd", "lr": res.lr, "val_acc": res.val_acc,
                                             "epoch": res.epoch, "per_lr": [list(p) for p in res.per_lr]})
        return res
    from lpft.vision.linear_probe import linear_probe

    cs = np.logspace(math.log10(c.lp_c_min), math.log10(c.lp_c_max), c.lp_num_cs)
    res = linear_probe(tx, ty, vx, vy, Cs=cs, num_classes=ctx.bench.num_classes, device=ctx.device,
                       progress=ctx.progress and D.is_main())
    ctx.write_json("linear_probe.json", {"solver": "lbfgs", "C": res.C, "val_acc": res.val_acc,
                                         "path": [list(map(float, p)) for p in res.path]})
    return res


def probe_extra(res) -> dict[str, float]:
    """The record fields that name an LP result's hyperparameter (``C`` or the SGD probe's ``lp_lr``)."""
    return {"C": float(res.C)} if hasattr(res, "C") else {"lp_lr": float(res.lr)}


def evaluate_head(ctx: RunContext, weight, bias, **extra) -> list[dict]:
    recs = []
    for s in ctx.bench.eval_splits:
        x, y = features(ctx, s)
        recs += split_records(ctx, s, x.float() @ weight.float().T + bias.float(), y, **extra)
    return recs


def evaluate_model(ctx: RunContext, model: nn.Module, *, desc: str = "", **extra) -> list[dict]:
    recs = []
    for s in ctx.bench.eval_splits:
        ds = ctx.eval_sets[s]
        logits, labels = engine.predict(model, ds, batch_size=ctx.cfg.eval_batch_size, device=ctx.device,
                                        num_workers=ctx.cfg.num_workers, progress=ctx.progress,
                                        desc=f"{desc}{s}", precision=ctx.cfg.precision)
        recs += split_records(ctx, s, logits, labels, **extra)
    return recs


def new_classifier(ctx: RunContext, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """Backbone copy + linear head: random (``torch`` default init, seeded) or the given weights."""
    from lpft.vision.backbones import Classifier

    torch.manual_seed(ctx.cfg.seed)
    model = Classifier(engine.clone_module(ctx.backbone), ctx.bench.num_classes)
    if weight is not None:
        with torch.no_grad():
            model.head.weight.copy_(weight)
            model.head.bias.copy_(bias)
    return model


def zeroshot_weights(ctx: RunContext):
    from lpft.vision.zeroshot import SIMPLE_TEMPLATES, imagenet_templates, zeroshot_head

    if not getattr(ctx.backbone, "is_clip", False):
        from lpft.vision.backbones import list_backbones

        clips = [b for b in list_backbones() if b.startswith("clip") or b == "tiny_clip"]
        raise ValueError(
            f"zero-shot classification needs a CLIP backbone (image + text towers); {ctx.cfg.backbone!r} is "
            f"not one. Use --backbone with one of: {', '.join(clips)}"
        )
    t = ctx.cfg.templates
    templates = imagenet_templates() if t == "imagenet" else SIMPLE_TEMPLATES if t == "simple" else ctx.bench.templates
    return zeroshot_head(ctx.backbone, list(ctx.bench.classnames), list(templates), device=ctx.device,
                         progress=ctx.progress)


def finetune(ctx: RunContext, model: nn.Module, subdir: str = "ckpt") -> nn.Module:
    """Run the engine, load the selected epoch into ``model`` and write the training history.

    The config's fine-tuning options (L2-SP, TPGM, freezing, SWA / EMA, LoRA, SSF; docs/methods.md) run as engine
    hooks (:func:`lpft.vision.modifiers.build_hooks`); with weight averaging the averaged model is the result.
    A hook with a ``merge`` method (LoRA, SSF) then merges its adapters into the weights: the returned model has the
    original architecture and parameter names, and its state is ``<subdir>/merged.pt``, the checkpoint
    ``history.json`` selects. The head fine-tuning starts from is saved as ``init_head.pt`` (``weight``, ``bias``;
    theta_0's head for ``--wiseft-from``), written again identically by a resumed run.
    """
    from lpft.vision.modifiers import build_hooks
    from lpft.vision.rundir import save_checkpoint
    from lpft.vision.tboard import EpochLogger

    hooks = build_hooks(ctx)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        ctx.save_torch("init_head.pt", {"weight": head.weight.detach().cpu().clone(),
                                        "bias": head.bias.detach().cpu().clone()})
    with EpochLogger(ctx.run_dir / "tensorboard" if D.is_main() else None) as log:
        res = engine.train(model, ctx.train_set, ctx.eval_sets["id_val"], ctx.settings(), device=ctx.device,
                           ckpt_dir=ctx.run_dir / subdir, resume=ctx.cfg.resume, progress=ctx.progress,
                           on_epoch_end=log, hooks=hooks)
    model.load_state_dict(res.best_state)
    ctx.notes["best_epoch"] = res.best_epoch
    ctx.notes["history"] = res.history
    selected = res.selected_checkpoint or (
        "best.pt" if ctx.cfg.select_epoch == "best" and res.best_epoch > 0 else "last.pt")
    extra: dict[str, Any] = {}
    mergers = [h for h in hooks if hasattr(h, "merge")]
    for h in mergers:
        model = h.merge(model)
    if mergers:  # the merged model is the run's model: export, soups and --wiseft-from read merged.pt
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if D.is_main():
            save_checkpoint({"model": state, "epoch": res.best_epoch, "val_acc": res.best_val_acc,
                             "source": "+".join(h.name for h in mergers), "merged_from": f"{subdir}/{selected}"},
                            ctx.run_dir / subdir / "merged.pt")
        extra = {"merged_from": f"{subdir}/{selected}",
                 "adapters": {h.name: h.summary() for h in mergers if hasattr(h, "summary")}}
        selected = "merged.pt"
    ctx.write_json("history.json", {"best_epoch": res.best_epoch, "select_epoch": ctx.cfg.select_epoch,
                                    "selected_checkpoint": f"{subdir}/{selected}" if res.best_epoch > 0 else None,
                                    **extra, "history": res.history})
    return model


def history_records(ctx: RunContext) -> list[dict]:
    recs = []
    for h in ctx.notes.get("history", []):
        recs.append(ctx.record("id_val", "acc", h["val_acc"], epoch=h["epoch"]))
        if h.get("train_loss") is not None:
            recs.append(ctx.record("id_train", "loss", h["train_loss"], epoch=h["epoch"]))
    return recs


def distortion_records(ctx: RunContext, model: nn.Module) -> list[dict]:
    """Feature change of the fine-tuned backbone vs the pretrained one on ID test and OOD splits (Sec. 4.3)."""
    from lpft.vision.distortion import measure_distortion

    if not ctx.cfg.distortion:
        return []
    recs = []
    for s in ctx.bench.eval_splits:
        if s == "id_val":
            continue
        d = measure_distortion(ctx.backbone, model.backbone, ctx.eval_sets[s], batch_size=ctx.cfg.eval_batch_size,
                               device=ctx.device, progress=ctx.progress and D.is_main())
        for metric in ("feature_sq_change", "feature_cosine"):
            if metric in d:
                recs.append(ctx.record(s, metric, d[metric]))
    return recs
