"""Config rules of the methods beyond the two papers (FLYP, WiSE-FT of any run) and the default run id.

Called by :func:`lpft.vision.config.resolve_config` (like :mod:`lpft.vision.modifiers`); this module imports neither
torch nor :mod:`lpft.vision.config` at import time (the config imports it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lpft.vision.config import RunConfig

__all__ = ["FLYP_RECIPE", "FLYP_SOURCES", "default_run_id", "derive_method_rules", "validate_method_rules"]

#: FLYP's recipe (docs/methods.md, "FLYP"): a preset layer above the WiSE-FT protocol FLYP runs under
#: (``recipe:flyp`` in a config's provenance; its sources: :data:`FLYP_SOURCES`)
FLYP_RECIPE = dict(optimizer="adamw", momentum=None, weight_decay=0.1, warmup_steps=500, grad_clip=None,
                   schedule="cosine_step", batch_size=512, epochs=10, lr=1e-5, select_epoch="best")

_FL = "locuslab/FLYP@215d5bb"
#: citations of FLYP's recipe (merged into :data:`lpft.vision.protocol.SOURCES`); the official code ran ImageNet,
#: iWildCam and FMoW with ViT-B/16 (README.md:34, 45, 54); lpft's FMoW split is LP-FT's, not FLYP's WILDS one
FLYP_SOURCES: dict[str, dict[str, str]] = {
    "optimizer": {"recipe:flyp": f"{_FL} src/models/flyp_loss.py:66-69 (AdamW over every parameter of both "
                                   f"towers, the logit scale included)"},
    "weight_decay": {"recipe:flyp": f"{_FL} README.md:34 (--wd=0.1, ImageNet)",
                     "pair:fmow/clip_vit_b16|flyp": f"{_FL} README.md:54 (--wd=0.2, FMoW)"},
    "lr": {"recipe:flyp": f"{_FL} README.md:34 (--lr=1e-5)",
           "pair:imagenet/clip_vit_b16|flyp": f"{_FL} README.md:34 (--lr=1e-5, ImageNet)",
           "pair:fmow/clip_vit_b16|flyp": f"{_FL} README.md:54 (--lr=1e-5, FMoW)"},
    "batch_size": {"recipe:flyp": f"{_FL} README.md:34 (--batch-size=512, ImageNet)",
                   "pair:fmow/clip_vit_b16|flyp": f"{_FL} README.md:54 (--batch-size=256, FMoW)"},
    "epochs": {"recipe:flyp": f"{_FL} README.md:34 (--epochs=10, ImageNet)",
               "pair:fmow/clip_vit_b16|flyp": f"{_FL} README.md:54 (--epochs=20, FMoW)"},
    "warmup_steps": {"recipe:flyp": f"{_FL} src/args.py:88-91 (500, the README commands keep the default)"},
    "schedule": {"recipe:flyp": f"{_FL} src/models/flyp_loss.py:71-72, 86-88; src/models/utils.py:15-34 "
                                  f"(linear warm-up, then cosine per step to min_lr 0, src/args.py:224-228)"},
    "grad_clip": {"recipe:flyp": f"none: {_FL} src/models/flyp_loss.py:84-108 (no clipping)"},
    "select_epoch": {"recipe:flyp": f"lpft: the best ID-val epoch; {_FL} src/models/flyp_loss.py:120-136 "
                                      f"evaluates and saves every epoch and selects none (docs/methods.md)",
                     "benchmark:imagenet|flyp": "lpft: the last epoch: ImageNet's official selection set (ImageNet "
                                                "val) is the reported ID test (docs/methods.md, FLYP)"},
    "precision": {"recipe:flyp": f"fp32: {_FL} clip/model.py:441-442"},
    "feature_norm": {"recipe:flyp": f"L2-normalised: {_FL} clip/model.py:375-376; src/models/zeroshot.py:51-61"},
    "freeze_bn": {"method:flyp": f"train mode: {_FL} src/models/flyp_loss.py:56-57, 80"},
    "templates": {"benchmark:imagenet|flyp": f"{_FL} README.md:34 (--template=openai_imagenet_template, for the "
                                             f"captions and the zero-shot head)"},
}


def derive_method_rules(cfg: "RunConfig", prov: dict[str, str], put: Callable) -> None:
    """Complete the config of WiSE-FT of another run (``--wiseft-from``), where nothing trains (``put`` sets a
    ``None`` field, marked ``derived``; FLYP's recipe is a preset layer, :data:`FLYP_RECIPE`)."""
    from lpft.vision.config import FINETUNE_KEYS

    if cfg.wiseft_from is not None:
        for k in FINETUNE_KEYS:  # no training: only the learning rate, the source run's, names the run
            if k != "lr":
                setattr(cfg, k, None)
                prov.pop(k, None)
        for k in ("lp_sgd_lrs", "lp_sgd_epochs", "lp_num_cs", "lp_train_augment", "lp_solver"):
            if prov.get(k) != "given":  # no linear probe either: theta_0's head comes from the source run
                setattr(cfg, k, None)
                prov.pop(k, None)


def validate_method_rules(cfg: "RunConfig") -> None:
    """Raise ValueError for FLYP on a non-CLIP backbone, or ``--wiseft-from`` with options that would train."""
    from lpft.vision.config import is_clip_name
    from lpft.vision.modifiers import MODIFIER_KEYS

    if cfg.method == "flyp" and not is_clip_name(cfg.backbone):
        from lpft.vision.backbones import list_backbones

        clips = [b for b in list_backbones() if is_clip_name(b)]
        raise ValueError(f"FLYP fine-tunes CLIP's image and text towers; backbone {cfg.backbone!r} is not a CLIP "
                         f"model. Use --backbone with one of: {', '.join(clips)}")
    if cfg.wiseft_from is None:
        if cfg.wiseft_source is not None:
            raise ValueError("wiseft_source is filled from --wiseft-from; it cannot be given alone")
        return
    if cfg.method != "wiseft":
        raise ValueError(f"--wiseft-from applies to --method wiseft (WiSE-FT of a finished run), not {cfg.method!r}")
    if cfg.wiseft_finetune != "end_to_end":
        raise ValueError("--wiseft-from interpolates the source run's fine-tuned weights; --wiseft-finetune does "
                         "not apply (leave it out)")
    trains = [f"--{k.replace('_', '-')}" for k in MODIFIER_KEYS if getattr(cfg, k, None) not in (None, False)]
    if trains:
        raise ValueError(f"{', '.join(trains)} modify fine-tuning, but --wiseft-from trains nothing: the source run's "
                         f"options are part of its weights (and of the records' wiseft_source)")


def default_run_id(cfg: "RunConfig") -> str:
    """``{benchmark}-{backbone}-{method}[-lc]-lr{lr}-seed{seed}`` (``-lc``: WiSE-FT's linear-classifier variant;
    the ``folder`` benchmark is named ``folder_<dataset folder name>``); WiSE-FT of another run:
    ``<source run id>-wiseft``."""
    if cfg.wiseft_from is not None:
        src = (cfg.wiseft_source or {}).get("run_id") or Path(cfg.wiseft_from).resolve().name
        return f"{src}-wiseft"
    lr = "na" if cfg.lr is None else f"{cfg.lr:g}"
    variant = "-lc" if cfg.method == "wiseft" and cfg.wiseft_finetune == "linear" else ""
    bench = cfg.benchmark
    if bench == "folder" and cfg.data_root:  # the user's dataset is named by its folder
        name = "".join(c if c.isalnum() or c in "._" else "_" for c in Path(cfg.data_root).resolve().name)
        bench = f"folder_{name}"
    return f"{bench}-{cfg.backbone}-{cfg.method}{variant}-lr{lr}-seed{cfg.seed}"
