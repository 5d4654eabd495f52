"""The options of end-to-end fine-tuning: their config rules and the engine hooks they build (docs/methods.md).

L2-SP (:mod:`lpft.vision.regularizers`), TPGM (the same), freeze-embed / surgical fine-tuning
(:mod:`lpft.vision.surgical`), SWA / EMA (:mod:`lpft.vision.averaging`), LoRA (:mod:`lpft.vision.adapters`) and
SSF (:mod:`lpft.vision.ssf`) modify FT, LP-FT and WiSE-FT's end-to-end fine-tuning stage. They are
:class:`~lpft.vision.config.RunConfig` fields (``None`` = off, so a ``config.json`` written before they existed
still matches) and reach :func:`lpft.vision.engine.train` as
:class:`~lpft.vision.engine.TrainHook` objects built by :func:`build_hooks`. This module imports no torch at
import time (``lpft.vision.config`` imports it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from lpft.vision.config import RunConfig
    from lpft.vision.context import RunContext

__all__ = ["MODIFIER_KEYS", "build_hooks", "default_swa_start", "derive_modifiers", "modifiers_label",
           "validate_modifiers"]

MODIFIER_KEYS = ("l2sp_alpha", "l2sp_beta", "train_blocks", "freeze_embed", "weight_average", "swa_start_epoch",
                 "ema_decay", "tpgm", "tpgm_frequency", "tpgm_steps", "tpgm_lr", "lora_rank", "lora_alpha",
                 "lora_targets", "ssf")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets")


def modifiers_label(cfg: "RunConfig") -> str | None:
    """A short, stable label of the fine-tuning options a run uses (``None`` without any), e.g.
    ``l2sp_alpha=0.01,weight_average=swa``: records carry it so tables never pool runs of different options."""
    parts = [f"{k}={getattr(cfg, k)}" for k in MODIFIER_KEYS if getattr(cfg, k, None) not in (None, False)]
    return ",".join(parts) or None


def default_swa_start(epochs: int) -> int:
    """SWA's default first averaged epoch: the last 25% of the epochs (20 epochs: 16..20; 10 epochs: 8..10)."""
    return max(1, epochs - math.ceil(epochs / 4) + 1)


def derive_modifiers(cfg: "RunConfig", prov: dict[str, str], put: Callable[[str, Any], None]) -> None:
    """Fill the defaults of the options that are on (``put`` sets a ``None`` field, marked ``derived``)."""
    # "off" is None, so that configs written before these options existed compare equal
    for k in ("freeze_embed", "tpgm", "ssf"):
        if not getattr(cfg, k):
            setattr(cfg, k, None)
            prov.pop(k, None)
    if cfg.l2sp_alpha is not None or cfg.l2sp_beta is not None:
        put("l2sp_alpha", 0.0)
        put("l2sp_beta", 0.0)
    if cfg.weight_average == "swa" and cfg.epochs is not None:
        put("swa_start_epoch", default_swa_start(cfg.epochs))
    if cfg.weight_average == "ema":
        put("ema_decay", 0.999)  # docs/methods.md
    if cfg.tpgm:
        put("tpgm_frequency", 1)
        put("tpgm_steps", 200)  # the official TPGM code's ImageNet default (docs/methods.md)
        put("tpgm_lr", 1e-2)
    if any(getattr(cfg, k) is not None for k in LORA_KEYS):
        from lpft.vision.adapters import DEFAULT_LORA_RANK

        put("lora_rank", DEFAULT_LORA_RANK)  # peft's default; Hu et al. 2022, App. D (docs/methods.md)
        if isinstance(cfg.lora_rank, int):
            put("lora_alpha", float(cfg.lora_rank))  # alpha = r (Hu et al. 2022, Sec. 4.1)
        put("lora_targets", "default")


def validate_modifiers(cfg: "RunConfig") -> None:
    """Raise ValueError for an option on a method that does not fine-tune end to end, or a bad value."""
    given = [f"--{k.replace('_', '-')}" for k in MODIFIER_KEYS if getattr(cfg, k) is not None]
    if not given:
        return
    if cfg.method not in ("ft", "lpft", "wiseft") or (cfg.method == "wiseft" and cfg.wiseft_finetune == "linear"):
        raise ValueError(f"{', '.join(given)} modify end-to-end fine-tuning (methods ft, lpft, and wiseft with "
                         f"--wiseft-finetune end_to_end); method {cfg.method!r} "
                         f"{'with --wiseft-finetune linear ' if cfg.method == 'wiseft' else ''}does not fine-tune")
    needs = {"swa_start_epoch": ("weight_average", "swa", "--weight-average swa"),
             "ema_decay": ("weight_average", "ema", "--weight-average ema"),
             **{k: ("tpgm", True, "--tpgm") for k in ("tpgm_frequency", "tpgm_steps", "tpgm_lr")}}
    for k, (other, value, flag) in needs.items():
        if getattr(cfg, k) is not None and getattr(cfg, other) != value:
            raise ValueError(f"--{k.replace('_', '-')} applies with {flag} only")
    epochs = cfg.epochs or 0
    checks = [("l2sp_alpha", lambda v: v >= 0, ">= 0"), ("l2sp_beta", lambda v: v >= 0, ">= 0"),
              ("swa_start_epoch", lambda v: 1 <= v <= epochs, f"an epoch in [1, epochs={epochs}]"),
              ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"), ("tpgm_steps", lambda v: v >= 1, ">= 1"),
              ("tpgm_frequency", lambda v: 1 <= v <= epochs, f"in [1, epochs={epochs}]"),
              ("tpgm_lr", lambda v: v > 0, "> 0")]
    for k, ok, what in checks:
        v = getattr(cfg, k)
        if v is not None and not ok(v):
            raise ValueError(f"--{k.replace('_', '-')} must be {what}, got {v}")
    if cfg.train_blocks is not None and not any(t.strip().lstrip("-").strip() for t in cfg.train_blocks.split(",")):
        raise ValueError(f"--train-blocks names nothing: {cfg.train_blocks!r}")
    _validate_adapters(cfg)


def _validate_adapters(cfg: "RunConfig") -> None:
    """LoRA / SSF: valid values, not together, not with freezing options (they freeze the backbone themselves),
    and peft installed for LoRA."""
    lora = any(getattr(cfg, k) is not None for k in LORA_KEYS)
    if not lora and not cfg.ssf:
        return
    if lora and cfg.ssf:
        raise ValueError("--lora-rank / --lora-alpha / --lora-targets and --ssf exclude each other: choose one "
                         "parameter-efficient method")
    frozen = [f for f, on in (("--train-blocks", cfg.train_blocks is not None), ("--freeze-embed", cfg.freeze_embed))
              if on]
    if frozen:
        raise ValueError(f"{'LoRA' if lora else '--ssf'} freezes the whole backbone itself; it excludes "
                         f"{' and '.join(frozen)}")
    if not lora:
        return
    r = cfg.lora_rank
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
        raise ValueError(f"--lora-rank must be a positive integer, got {r!r}")
    if cfg.lora_alpha is not None and not cfg.lora_alpha > 0:
        raise ValueError(f"--lora-alpha must be > 0, got {cfg.lora_alpha}")
    if cfg.lora_targets is not None and not any(t.strip() for t in str(cfg.lora_targets).split(",")):
        raise ValueError(f"--lora-targets names nothing: {cfg.lora_targets!r}; expected default, conv, linear or "
                         f"module names")
    from lpft.vision.adapters import PEFT_HINT, peft_available

    if not peft_available():
        raise ValueError(f"{PEFT_HINT}; it is not installed in this environment")


def build_hooks(ctx: "RunContext") -> list:
    """The engine hooks of ``ctx.cfg``'s options, in the order they must run: LoRA / SSF and freezing first (the
    others record only what trains), then L2-SP, TPGM (its projection precedes the average) and the weight
    average."""
    cfg = ctx.cfg
    hooks: list = []
    if cfg.lora_rank is not None:
        from lpft.vision.adapters import LoRA

        hooks.append(LoRA(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed))
    if cfg.ssf:
        from lpft.vision.ssf import SSF

        hooks.append(SSF())
    if cfg.train_blocks is not None or cfg.freeze_embed:
        from lpft.vision.surgical import Freeze

        hooks.append(Freeze(cfg.train_blocks, bool(cfg.freeze_embed)))
    if cfg.l2sp_alpha is not None:
        from lpft.vision.regularizers import L2SP

        hooks.append(L2SP(cfg.l2sp_alpha, cfg.l2sp_beta or 0.0))
    if cfg.tpgm:
        from lpft.vision.regularizers import TPGM

        hooks.append(TPGM(ctx.eval_sets["id_val"], batch_size=cfg.batch_size, device=ctx.device,
                          steps=cfg.tpgm_steps, lr=cfg.tpgm_lr, frequency=cfg.tpgm_frequency,
                          num_workers=cfg.num_workers, precision=cfg.precision, seed=cfg.seed))
    if cfg.weight_average is not None:
        from lpft.vision.averaging import WeightAverage

        hooks.append(WeightAverage(
            cfg.weight_average, epochs=cfg.epochs, swa_start_epoch=cfg.swa_start_epoch,
            ema_decay=cfg.ema_decay if cfg.ema_decay is not None else 0.999,
            bn_set=None if cfg.freeze_bn else ctx.train_set_eval, batch_size=cfg.eval_batch_size, device=ctx.device,
            num_workers=cfg.num_workers, precision=cfg.precision, seed=cfg.seed, progress=ctx.progress))
    return hooks
