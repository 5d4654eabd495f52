"""The five methods, registered by name: ``lp``, ``ft``, ``lpft``, ``wiseft``, ``zeroshot``.

Each method is a function ``(ctx: RunContext) -> list[record]``. They share the pieces in this module:
cached feature extraction, the LP solve, the fine-tuning loop of :mod:`lpft.vision.engine`, and
evaluation on every split of the benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lpft.vision import engine
from lpft.vision.config import RunConfig
from lpft.vision.io import write_json_atomic
from lpft.vision.records import make_record
from lpft.vision.registry import Registry


@dataclass
class RunContext:
    """Everything a method needs; built by :func:`lpft.vision.run.run`."""

    cfg: RunConfig
    bench: Any  # lpft.vision.data.Benchmark
    backbone: Any  # lpft.vision.backbones.Backbone (pretrained; methods never modify it in place)
    train_set: Any  # id_train with the backbone's train transform
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
        return make_record(
            run_id=cfg.run_id, method=cfg.method, backbone=cfg.backbone, benchmark=cfg.benchmark,
            eval_split=split, shift=self.bench.splits[split], metric=metric, value=value, seed=cfg.seed,
            lr=cfg.lr, epoch=extra.pop("epoch", None), **extra,
        )

    def settings(self) -> engine.TrainSettings:
        c = self.cfg
        return engine.TrainSettings(
            lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, optimizer=c.optimizer, momentum=c.momentum,
            weight_decay=c.weight_decay, schedule=c.schedule, warmup_steps=c.warmup_steps or 0,
            grad_clip=c.grad_clip, freeze_bn=bool(c.freeze_bn), seed=c.seed, num_workers=c.num_workers,
            eval_batch_size=c.eval_batch_size,
        )


METHODS: Registry[Callable[[RunContext], list]] = Registry("method")


# --- features and linear heads ---------------------------------------------------------------------------
def features(ctx: RunContext, split: str, *, train_augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the pretrained backbone on ``split``, cached on disk (a rerun does no forward pass)."""
    from lpft.vision.features import extract_features

    if split == "id_train":
        ds = ctx.train_set if train_augment else ctx.train_set_eval
    else:
        ds = ctx.eval_sets[split]
    c = ctx.cfg
    key = {
        "backbone": c.backbone, "weights": ctx.backbone.weights_id, "benchmark": c.benchmark, "split": split,
        "transform": repr(ds.transform), "limit": c.limit, "n": len(ds), "data_root": c.data_root,
        # augmented train features depend on the draw: key them by seed
        "seed": c.seed if (split == "id_train" and train_augment) else None,
    }
    if split == "id_train" and train_augment:
        torch.manual_seed(c.seed)
    return extract_features(ctx.backbone, ds, batch_size=c.eval_batch_size, num_workers=c.num_workers,
                            device=ctx.device, cache_dir=ctx.cache_dir, cache_key=key, progress=ctx.progress)


def head_accuracy(ctx: RunContext, split: str, weight: torch.Tensor, bias: torch.Tensor) -> float:
    x, y = features(ctx, split)
    logits = x.float() @ weight.float().T + bias.float()
    return engine.accuracy(logits, y, ctx.eval_sets[split])


def fit_linear_probe(ctx: RunContext):
    """LP on cached features (Kumar et al. 2022, Sec. 4; PROTOCOL-LPFT 4.3): C chosen on ID validation."""
    from lpft.vision.linear_probe import linear_probe

    c = ctx.cfg
    tx, ty = features(ctx, "id_train", train_augment=bool(c.lp_train_augment))
    vx, vy = features(ctx, "id_val")
    cs = np.logspace(math.log10(c.lp_c_min), math.log10(c.lp_c_max), c.lp_num_cs)
    res = linear_probe(tx, ty, vx, vy, Cs=cs, num_classes=ctx.bench.num_classes, device=ctx.device,
                       progress=ctx.progress)
    write_json_atomic(ctx.run_dir / "linear_probe.json",
                      {"C": res.C, "val_acc": res.val_acc, "path": [list(map(float, p)) for p in res.path]})
    return res


def evaluate_head(ctx: RunContext, weight, bias, **extra) -> list[dict]:
    return [ctx.record(s, "acc", head_accuracy(ctx, s, weight, bias), **extra) for s in ctx.bench.eval_splits]


def evaluate_model(ctx: RunContext, model: nn.Module, *, desc: str = "", **extra) -> list[dict]:
    recs = []
    for s in ctx.bench.eval_splits:
        ds = ctx.eval_sets[s]
        logits, labels = engine.predict(model, ds, batch_size=ctx.cfg.eval_batch_size, device=ctx.device,
                                        num_workers=ctx.cfg.num_workers, progress=ctx.progress,
                                        desc=f"{desc}{s}")
        recs.append(ctx.record(s, "acc", engine.accuracy(logits, labels, ds), **extra))
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
    from lpft.vision.zeroshot import imagenet_templates, SIMPLE_TEMPLATES, zeroshot_head

    if not getattr(ctx.backbone, "is_clip", False):
        from lpft.vision.backbones import list_backbones

        clips = [b for b in list_backbones() if b.startswith("clip") or b == "tiny_clip"]
        raise ValueError(
            f"zero-shot classification needs a CLIP backbone (image + text towers); {ctx.cfg.backbone!r} is "
            f"not one. Use --backbone with one of: {', '.join(clips)}"
        )
    t = ctx.cfg.templates
    templates = imagenet_templates() if t == "imagenet" else SIMPLE_TEMPLATES if t == "simple" else ctx.bench.templates
    return zeroshot_head(ctx.backbone, list(ctx.bench.classnames), list(templates), device=ctx.device)


def finetune(ctx: RunContext, model: nn.Module, subdir: str = "ckpt") -> nn.Module:
    """Run the engine, load the best epoch into ``model`` and write the training history."""
    res = engine.train(model, ctx.train_set, ctx.eval_sets["id_val"], ctx.settings(), device=ctx.device,
                       ckpt_dir=ctx.run_dir / subdir, resume=ctx.cfg.resume, progress=ctx.progress)
    model.load_state_dict(res.best_state)
    ctx.notes["best_epoch"] = res.best_epoch
    ctx.notes["history"] = res.history
    write_json_atomic(ctx.run_dir / "history.json", {"best_epoch": res.best_epoch, "history": res.history})
    return model


def history_records(ctx: RunContext) -> list[dict]:
    return [ctx.record("id_val", "acc", h["val_acc"], epoch=h["epoch"]) for h in ctx.notes.get("history", [])]


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
                               device=ctx.device)
        for metric in ("feature_sq_change", "feature_cosine"):
            if metric in d:
                recs.append(ctx.record(s, metric, d[metric]))
    return recs


# --- the methods ----------------------------------------------------------------------------------------
@METHODS.register("lp")
def run_lp(ctx: RunContext) -> list[dict]:
    """Linear probing: frozen pretrained features, L2 logistic regression with C chosen on ID val."""
    res = fit_linear_probe(ctx)
    torch.save({"weight": res.weight, "bias": res.bias, "C": res.C}, ctx.run_dir / "head.pt")
    return evaluate_head(ctx, res.weight, res.bias, C=float(res.C))


@METHODS.register("zeroshot")
def run_zeroshot(ctx: RunContext) -> list[dict]:
    """CLIP zero-shot: head from class names x prompt templates (Radford et al. 2021; WiSE-FT's theta_0)."""
    w, b = zeroshot_weights(ctx)
    return evaluate_head(ctx, w, b)


@METHODS.register("ft")
def run_ft(ctx: RunContext) -> list[dict]:
    """Full fine-tuning from a randomly initialised head."""
    model = finetune(ctx, new_classifier(ctx))
    return evaluate_model(ctx, model) + history_records(ctx) + distortion_records(ctx, model)


@METHODS.register("lpft")
def run_lpft(ctx: RunContext) -> list[dict]:
    """LP-FT (Kumar et al. 2022, Sec. 4): LP, then fine-tune everything starting from exactly the LP head."""
    res = fit_linear_probe(ctx)
    model = new_classifier(ctx, res.weight, res.bias)
    ctx.notes["lp_head"] = (res.weight.clone(), res.bias.clone())
    model = finetune(ctx, model)
    return evaluate_model(ctx, model) + history_records(ctx) + distortion_records(ctx, model)


@METHODS.register("wiseft")
def run_wiseft(ctx: RunContext) -> list[dict]:
    """WiSE-FT (Wortsman et al. 2022): evaluate ``(1 - alpha) theta_0 + alpha theta_1`` for every alpha.

    theta_0: the zero-shot model for CLIP backbones, else the LP model. theta_1: fine-tuned end to end
    from theta_0 (``--wiseft-finetune end_to_end``) or, for CLIP, the linear probe on frozen features
    (``linear``, then only the head differs and every alpha comes from one pass over cached features).
    With BatchNorm backbones each alpha is reported twice: with interpolated running statistics and with
    statistics re-estimated on ID training images (``bn_stats``).
    """
    from lpft.vision.backbones import has_batchnorm

    cfg = ctx.cfg
    if getattr(ctx.backbone, "is_clip", False):
        w0, b0 = zeroshot_weights(ctx)
        theta0_name = "zeroshot"
    else:
        if cfg.wiseft_finetune == "linear":
            raise ValueError("--wiseft-finetune linear needs a CLIP backbone (theta_0 = zero-shot head); for "
                             f"{cfg.backbone!r} theta_0 is already the linear probe")
        res = fit_linear_probe(ctx)
        w0, b0 = res.weight, res.bias
        theta0_name = "lp"
    model0 = new_classifier(ctx, w0, b0)
    theta0 = {k: v.detach().cpu().clone() for k, v in model0.state_dict().items()}
    if cfg.wiseft_finetune == "linear":
        res = fit_linear_probe(ctx)
        model1 = new_classifier(ctx, res.weight, res.bias)
    else:
        model1 = finetune(ctx, new_classifier(ctx, w0, b0))
    theta1 = {k: v.detach().cpu().clone() for k, v in model1.state_dict().items()}
    ctx.notes["theta0"] = theta0_name

    head_keys = {"head.weight", "head.bias"}
    only_head = all(torch.equal(theta0[k], theta1[k]) for k in theta0 if k not in head_keys)
    records: list[dict] = []
    alphas = list(cfg.alphas)
    if only_head:
        for a in tqdm(alphas, desc="WiSE-FT alphas (cached features)", disable=not ctx.progress):
            th = engine.interpolate_state_dicts(theta0, theta1, a)
            records += evaluate_head(ctx, th["head.weight"], th["head.bias"], alpha=a)
        return records + history_records(ctx)

    bn = has_batchnorm(model1)
    variants = ["interpolated", "recomputed"] if (bn and cfg.wiseft_recompute_bn) else ["interpolated"]
    model = model1
    for a in tqdm(alphas, desc="WiSE-FT alphas", disable=not ctx.progress):
        th = engine.interpolate_state_dicts(theta0, theta1, a)
        for v in variants:
            model.load_state_dict(th)
            if v == "recomputed" and 0.0 < a < 1.0:  # the endpoints are reported exactly as they are
                engine.recompute_batchnorm(model, ctx.train_set_eval, batch_size=cfg.eval_batch_size,
                                           device=ctx.device, num_workers=cfg.num_workers, seed=cfg.seed)
            records += evaluate_model(ctx, model, desc=f"a={a:g} ", alpha=a,
                                      bn_stats=v if bn else None)
    if cfg.distortion:
        model.load_state_dict(theta1)
        records += distortion_records(ctx, model)
    return records + history_records(ctx)
