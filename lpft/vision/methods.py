"""The methods, registered by name: ``lp``, ``ft``, ``lpft``, ``wiseft``, ``zeroshot``, and FLYP (``flyp``,
:mod:`lpft.vision.flyp`). ``wiseft`` with ``--wiseft-from RUN`` is WiSE-FT of a finished run
(:mod:`lpft.vision.wiseft_from`).

Each method is a function ``(ctx: RunContext) -> list[record]`` built from the shared pieces of
:mod:`lpft.vision.context`: cached feature extraction, the LP solve, the fine-tuning engine, and evaluation on
every split of the benchmark. Methods that compute another model on the way report it too (LP-FT its LP
stage, WiSE-FT its endpoints), marked by the record field ``stage``.
"""

from __future__ import annotations

from typing import Callable

import torch
from lpft.vision.progress import tqdm

from lpft.vision import distributed as D
from lpft.vision import engine
from lpft.vision.context import (RunContext, distortion_records, evaluate_head, evaluate_model, features,
                                 finetune, fit_linear_probe, history_records, new_classifier, probe_extra,
                                 zeroshot_weights)
from lpft.vision.flyp import run_flyp
from lpft.vision.registry import Registry

__all__ = ["METHODS", "RunContext", "evaluate_alphas"]

METHODS: Registry[Callable[[RunContext], list]] = Registry("method")
METHODS.register("flyp")(run_flyp)


@METHODS.register("lp")
def run_lp(ctx: RunContext) -> list[dict]:
    """Linear probing: frozen pretrained features, a linear head chosen on the selection set."""
    res = fit_linear_probe(ctx)
    ctx.save_torch("head.pt", {"weight": res.weight, "bias": res.bias, **probe_extra(res)})
    return evaluate_head(ctx, res.weight, res.bias, **probe_extra(res))


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
    """LP-FT (Kumar et al. 2022, Sec. 4): LP, then fine-tune everything starting from exactly the LP head.

    The LP stage is reported too (``stage="lp"``), so every LP-FT run shows the comparison it exists for.
    """
    res = fit_linear_probe(ctx)
    lp_records = evaluate_head(ctx, res.weight, res.bias, stage="lp", lr=None, **probe_extra(res))
    model = new_classifier(ctx, res.weight, res.bias)
    ctx.notes["lp_head"] = (res.weight.clone(), res.bias.clone())
    model = finetune(ctx, model)
    return evaluate_model(ctx, model) + lp_records + history_records(ctx) + distortion_records(ctx, model)


def _linear_classifier(ctx: RunContext, w0: torch.Tensor, b0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """WiSE-FT's linear-classifier variant: fine-tune the zero-shot head alone with the end-to-end recipe
    (AdamW, warm-up + cosine per step, clipping; the last epoch) on cached features of un-augmented train
    images (docs/protocols.md, "WiSE-FT linear classifier")."""
    from lpft.vision.head_training import train_linear_head

    c = ctx.cfg
    tx, ty = features(ctx, "id_train", train_augment=False)
    vx, vy = features(ctx, "id_val")
    res = train_linear_head(
        tx, ty, vx, vy, num_classes=ctx.bench.num_classes, init_weight=w0, init_bias=b0, optimizer=c.optimizer,
        lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, momentum=c.momentum or 0.0,
        weight_decay=c.weight_decay or 0.0, schedule=c.schedule, warmup_steps=c.warmup_steps or 0,
        grad_clip=c.grad_clip, seed=c.seed, device=ctx.device, select=c.select_epoch,
        val_project=getattr(ctx.eval_sets["id_val"], "project_logits", None), progress=ctx.progress and D.is_main())
    ctx.notes["history"] = [{k: h[k] for k in ("epoch", "val_acc", "train_loss", "lr")} for h in res.history]
    ctx.write_json("history.json", {"best_epoch": res.epoch, "select_epoch": c.select_epoch,
                                    "history": ctx.notes["history"]})
    return res.weight, res.bias


@METHODS.register("wiseft")
def run_wiseft(ctx: RunContext) -> list[dict]:
    """WiSE-FT (Wortsman et al. 2022): evaluate ``(1 - alpha) theta_0 + alpha theta_1`` for every alpha.

    theta_0: the zero-shot model for CLIP backbones, else the LP model. theta_1: fine-tuned end to end from
    theta_0 (``--wiseft-finetune end_to_end``) or, for CLIP, the zero-shot head fine-tuned alone on frozen
    features (``linear``, WiSE-FT's LC variant; then only the head differs and every alpha comes from one pass
    over cached features). Under the WiSE-FT protocol theta_1 is the last epoch. With BatchNorm backbones each
    alpha is reported twice: interpolated running statistics, and statistics re-estimated on ID training
    images (``bn_stats``). With ``--wiseft-from RUN`` both endpoints come from that finished run instead
    (:mod:`lpft.vision.wiseft_from`).
    """
    cfg = ctx.cfg
    if cfg.wiseft_from is not None:  # WiSE-FT of another finished run: nothing trains
        from lpft.vision.wiseft_from import run_wiseft_from

        return run_wiseft_from(ctx)
    if getattr(ctx.backbone, "is_clip", False):
        w0, b0 = zeroshot_weights(ctx)
        ctx.notes["theta0"] = "zeroshot"
    else:
        res = fit_linear_probe(ctx)
        w0, b0 = res.weight, res.bias
        ctx.notes["theta0"] = "lp"
    # theta_0's head (the backbone's is the pretrained one): enough to rebuild theta_0 (lpft.vision.export)
    ctx.save_torch("theta0_head.pt", {"weight": w0.detach().cpu(), "bias": b0.detach().cpu(),
                                      "source": ctx.notes["theta0"]})
    model0 = new_classifier(ctx, w0, b0)
    theta0 = {k: v.detach().cpu().clone() for k, v in model0.state_dict().items()}
    if cfg.wiseft_finetune == "linear":
        w1, b1 = _linear_classifier(ctx, w0, b0)
        ctx.save_torch("theta1_head.pt", {"weight": w1.detach().cpu(), "bias": b1.detach().cpu()})
        model1 = new_classifier(ctx, w1, b1)
    else:
        model1 = finetune(ctx, new_classifier(ctx, w0, b0))
    theta1 = {k: v.detach().cpu().clone() for k, v in model1.state_dict().items()}
    records = evaluate_alphas(ctx, model1, theta0, theta1)
    if cfg.distortion and not only_head(theta0, theta1):
        model1.load_state_dict(theta1)
        records += distortion_records(ctx, model1)
    return records + history_records(ctx)


def only_head(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor]) -> bool:
    """Whether two Classifier state dicts differ in the linear head alone (then cached features serve every
    alpha); False for models without a ``head`` (FLYP)."""
    head_keys = {"head.weight", "head.bias"}
    return head_keys <= set(theta0) and all(torch.equal(theta0[k], theta1[k]) for k in theta0 if k not in head_keys)


def evaluate_alphas(ctx: RunContext, model: torch.nn.Module, theta0: dict[str, torch.Tensor],
                    theta1: dict[str, torch.Tensor], **extra) -> list[dict]:
    """Records of ``(1 - alpha) theta0 + alpha theta1`` for every alpha of the config (WiSE-FT's evaluation).

    Args:
        ctx: the run.
        model: a module whose state dict ``theta0`` and ``theta1`` are (it is overwritten; it ends at the last
            alpha): a Classifier, or a :class:`~lpft.vision.flyp.FlypModel`.
        theta0 / theta1: the endpoints (CPU state dicts with the same keys).
        extra: record fields added to every record (``wiseft_source`` for ``--wiseft-from``).

    Returns:
        Per alpha, accuracy / ECE / NLL on every split. When only the head differs, from one pass over cached
        features. With BatchNorm, each alpha twice: interpolated running statistics, and statistics re-estimated
        on ID training images (``bn_stats``; the endpoints are reported as they are).
    """
    from lpft.vision.backbones import has_batchnorm

    cfg = ctx.cfg
    records: list[dict] = []
    alphas = list(cfg.alphas)
    if only_head(theta0, theta1):
        for a in tqdm(alphas, desc="WiSE-FT alphas (cached features)", disable=not ctx.progress or not D.is_main()):
            th = engine.interpolate_state_dicts(theta0, theta1, a)
            records += evaluate_head(ctx, th["head.weight"], th["head.bias"], alpha=a, **extra)
        return records
    bn = has_batchnorm(model)
    variants = ["interpolated", "recomputed"] if (bn and cfg.wiseft_recompute_bn) else ["interpolated"]
    for a in tqdm(alphas, desc="WiSE-FT alphas", disable=not ctx.progress or not D.is_main()):
        th = engine.interpolate_state_dicts(theta0, theta1, a)
        for v in variants:
            model.load_state_dict(th)
            if v == "recomputed" and 0.0 < a < 1.0:  # the endpoints are reported exactly as they are
                engine.recompute_batchnorm(model, ctx.train_set_eval, batch_size=cfg.eval_batch_size,
                                           device=ctx.device, num_workers=cfg.num_workers, seed=cfg.seed,
                                           progress=ctx.progress and D.is_main(), precision=cfg.precision)
            records += evaluate_model(ctx, model, desc=f"a={a:g} ", alpha=a, bn_stats=v if bn else None, **extra)
    return records
