"""Run configuration and the papers' protocols as presets.

:class:`RunConfig` holds every knob of a run. :func:`resolve_config` fills unset fields (``None``) from, in
order of precedence: the command line, the preset for ``(benchmark, backbone)``, the backbone's preset, the
benchmark's preset, the fine-tuning protocol, the method's defaults. It can report, per field, which layer
set it (``provenance``); :mod:`lpft.vision.protocol` turns that into citations. The fully resolved config is
written to ``<run_dir>/config.json``. Every recipe is documented with its source in ``docs/protocols.md``.

Protocols:

* ``lpft`` (Kumar et al. 2022): SGD, momentum 0.9, no weight decay, cosine schedule stepped once per epoch,
  no warm-up, batch 64, 20 epochs (50 for DomainNet / FMoW, 10 for ImageNet), fp32, best epoch by the
  selection set; LP = L2 logistic regression over 50 values of C in [1e-7, 1e2]; LP-FT fine-tunes from the
  LP head with the network in eval mode (BatchNorm statistics frozen) and a smaller learning rate; CLIP
  features are the raw projected embedding; the benchmark owns its transforms.
* ``wiseft`` (Wortsman et al. 2022): AdamW (wd 0.1 on all parameters), lr 3e-5, 500 warm-up steps then
  cosine per step, gradient clipping at norm 1, 10 epochs, batch 512, fp32, the last epoch is theta_1, head
  initialised from the zero-shot classifier on L2-normalised CLIP features, CLIP's own preprocessing;
  interpolate over alpha in {0, 0.1, ..., 1}.
* method ``flyp`` (Goyal et al. 2023) runs the WiSE-FT protocol with FLYP's recipe above it: no clipping, lr 1e-5,
  the best ID-val epoch (docs/methods.md, "FLYP"; citations: :data:`lpft.vision.configrules.FLYP_SOURCES`).

``batch_size`` is always the **global** batch: under ``torchrun`` with N ranks and ``grad_accum`` K, every
rank processes ``batch_size / (N * K)`` images per micro-step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lpft.vision.configrules import FLYP_RECIPE, default_run_id, derive_method_rules, validate_method_rules  # noqa
from lpft.vision.modifiers import derive_modifiers, validate_modifiers

METHODS = ("lp", "ft", "lpft", "wiseft", "zeroshot", "flyp")
FINETUNE_METHODS = ("ft", "lpft", "wiseft", "flyp")
OPTIMIZERS = ("sgd", "adamw")
CHOICES: dict[str, tuple] = {
    "precision": ("fp32", "bf16"),
    "selection": ("paper", "heldout"),
    "fmow_val": ("id", "ood"),
    "lp_solver": ("lbfgs", "sgd"),
    "select_epoch": ("best", "last"),
    "transforms": ("benchmark", "backbone"),
    "on_corrupt": ("stop", "skip"),
    "wiseft_finetune": ("end_to_end", "linear"),
    "templates": ("imagenet", "benchmark", "simple"),
    "weight_average": ("swa", "ema"),
}
#: benchmarks whose official LP-FT configs define their own transforms (docs/protocols.md)
OFFICIAL_TRANSFORM_BENCHMARKS = ("living17", "entity30", "cifar10", "domainnet", "fmow", "imagenet")


def is_clip_name(backbone: str | None) -> bool:
    """Whether a registered backbone name is a CLIP model (image + text towers)."""
    return backbone is not None and (backbone.startswith("clip_") or backbone == "tiny_clip")


@dataclass
class RunConfig:
    """Every setting of one run; ``None`` means "take it from the preset"."""

    method: str = "lpft"
    backbone: str | None = None
    benchmark: str = "digits"
    data_root: str | None = None
    out: str = "runs"
    run_id: str | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False

    # backbone
    weights: str | None = None
    pretrained: str | None = None
    image_size: int | None = None
    augment: bool | None = None
    feature_norm: bool | None = None  # CLIP only: L2-normalise the image embedding (WiSE-FT) or not (LP-FT)
    transforms: str | None = None  # "benchmark" (official dataset configs) | "backbone" (its own preprocessing)

    # data
    selection: str | None = None  # "paper": the official selection set, full train | "heldout": held-out val
    fmow_val: str | None = None  # FMoW only: WILDS 'val' read as ID Val (wilds 1.1.0) or OOD Val (>= 1.2.1)

    # optimisation (fine-tuning stage of ft / lpft / wiseft)
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None  # global batch (all ranks, all accumulation steps)
    grad_accum: int = 1
    protocol: str | None = None  # "lpft" (SGD, per-epoch cosine) | "wiseft" (AdamW, warm-up, clipping)
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    schedule: str | None = None  # "cosine_epoch" (LP-FT) | "cosine_step" (WiSE-FT, with warm-up)
    freeze_bn: bool | None = None  # LP-FT: whole network in eval mode while fine-tuning
    select_epoch: str | None = None  # "best" ID-selection epoch (LP-FT) | "last" epoch (WiSE-FT's theta_1)
    precision: str | None = None  # "fp32" (the papers; TF32 matmuls allowed on GPU) | "bf16" autocast
    num_workers: int = 0
    on_corrupt: str = "stop"  # a corrupt image stops the run ("stop") or is skipped and counted ("skip")

    # linear probing
    lp_solver: str | None = None  # "lbfgs": sklearn-style C path | "sgd": LP-FT's torch SGD linear probe
    lp_num_cs: int | None = None  # 50 in the LP-FT protocol
    lp_c_min: float = 1e-7
    lp_c_max: float = 1e2
    lp_train_augment: bool | None = None
    lp_sgd_lrs: list[float] | None = None
    lp_sgd_epochs: int | None = None

    # WiSE-FT
    alphas: list[float] | None = None
    wiseft_finetune: str = "end_to_end"  # or "linear": fine-tune only the zero-shot head (the LC variant)
    wiseft_recompute_bn: bool = True
    wiseft_from: str | None = None  # WiSE-FT of this finished run (lpft.vision.wiseft_from); nothing trains
    wiseft_source: dict[str, Any] | None = None  # filled from --wiseft-from: run dir, run id, config hash, method

    # options of end-to-end fine-tuning (ft, lpft, WiSE-FT's theta_1; docs/methods.md); None = off
    l2sp_alpha: float | None = None  # L2-SP: + alpha/2 ||w - w0||^2 over the backbone (Li et al. 2018)
    l2sp_beta: float | None = None  # L2-SP: + beta/2 ||w||^2 over the head
    train_blocks: str | None = None  # surgical fine-tuning: groups / name prefixes that train (lpft.vision.surgical)
    freeze_embed: bool | None = None  # the patch / stem embedding stays pretrained (Kumar et al. 2022b)
    weight_average: str | None = None  # "swa" | "ema": the averaged weights are the result
    swa_start_epoch: int | None = None  # first averaged epoch (derived: the last 25% of the epochs)
    ema_decay: float | None = None  # derived: 0.999
    tpgm: bool | None = None  # TPGM: projection onto learned balls around w0 (Tian et al. 2023)
    tpgm_frequency: int | None = None  # epochs between radius updates (derived: 1)
    tpgm_steps: int | None = None  # radius steps per update (derived: 200)
    tpgm_lr: float | None = None  # Adam learning rate of the radii (derived: 1e-2)
    lora_rank: int | None = None  # LoRA through peft (Hu et al. 2022; lpft.vision.adapters); derived: 8
    lora_alpha: float | None = None  # LoRA scale: the update is alpha/r B A (derived: = lora_rank)
    lora_targets: str | None = None  # LoRA targets: default | conv | linear | module names (derived: default)
    ssf: bool | None = None  # SSF: per-channel scale & shift, frozen backbone (Lian et al. 2022; lpft.vision.ssf)

    # zero-shot
    templates: str | None = None  # "imagenet" (80 OpenAI templates) | "benchmark" | "simple"

    # bookkeeping
    limit: int | None = None  # cap every split at this many examples (smoke tests)
    eval_batch_size: int | None = None
    cache_dir: str | None = None
    distortion: bool = True
    preset: str | None = None
    split_info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**d)


# --- protocols ----------------------------------------------------------------------------------------
# What every protocol fixes, whatever the method (docs/protocols.md, "Shared fields").
LPFT_COMMON = dict(precision="fp32", selection="paper", lp_solver="lbfgs", feature_norm=False)
WISEFT_COMMON = dict(precision="fp32", selection="paper", lp_solver="lbfgs", feature_norm=True)
# The fine-tuning recipe (docs/protocols.md, "LP-FT protocol" / "WiSE-FT protocol").
LPFT_PROTOCOL = dict(
    LPFT_COMMON, optimizer="sgd", momentum=0.9, weight_decay=0.0, warmup_steps=0, grad_clip=None,
    schedule="cosine_epoch", batch_size=64, epochs=20, select_epoch="best",
)
WISEFT_PROTOCOL = dict(
    WISEFT_COMMON, optimizer="adamw", momentum=None, weight_decay=0.1, warmup_steps=500, grad_clip=1.0,
    schedule="cosine_step", batch_size=512, epochs=10, lr=3e-5, select_epoch="last",
)
PROTOCOLS = {"lpft": LPFT_PROTOCOL, "wiseft": WISEFT_PROTOCOL}
PROTOCOL_COMMON = {"lpft": LPFT_COMMON, "wiseft": WISEFT_COMMON}
RECIPE_KEYS = ("optimizer", "momentum", "weight_decay", "warmup_steps", "grad_clip", "schedule", "select_epoch")
FINETUNE_KEYS = ("lr", "epochs", "batch_size", "optimizer", "momentum", "weight_decay", "warmup_steps", "grad_clip",
                 "schedule", "freeze_bn", "select_epoch")
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lp": dict(lp_train_augment=True),
    "ft": dict(lr=1e-3, freeze_bn=False),
    "lpft": dict(lr=1e-4, freeze_bn=True, lp_train_augment=True),
    "wiseft": dict(lr=1e-4, freeze_bn=False, lp_train_augment=True, alphas=[round(0.1 * i, 1) for i in range(11)]),
    "zeroshot": dict(), "flyp": dict(freeze_bn=False),
}

# --- presets: benchmark, backbone, then (benchmark, backbone) ------------------------------------------
# Learning rates: the best runs of the LP-FT release (docs/protocols.md, "Learning rates").
BENCHMARK_PRESETS: dict[str, dict[str, Any]] = {
    # the offline default: the lab backbone (SimCLR on an unlabelled digits pool; docs/lab.md), where the
    # paper's claim holds over 5 seeds (README, "The offline lab"); efficientnet_lite0 is the ImageNet alternative
    "digits": dict(backbone="digits_simclr", templates="benchmark"),
    "living17": dict(backbone="moco_v2_resnet50", epochs=20, lr={"ft": 1e-3, "lpft": 1e-4}),
    "entity30": dict(backbone="moco_v2_resnet50", epochs=20, lr={"ft": 1e-3, "lpft": 3e-5}),
    "cifar10": dict(backbone="moco_v2_resnet50", epochs=20, lr={"ft": 1e-3, "lpft": 1e-4}),
    "domainnet": dict(backbone="clip_rn50", epochs=50, lr={"ft": 1e-3, "lpft": 3e-7}),
    "fmow": dict(backbone="mocotp_fmow_resnet50", epochs=50, lr={"ft": 1e-2, "lpft": 1e-4}, fmow_val="id"),
    # ImageNet LP (and the LP-FT head): the release's torch SGD linear probe, 5 epochs, lr grid 0.01/0.03/0.1
    "imagenet": dict(backbone="clip_vit_b16", epochs=10, batch_size={"ft": 128, "lpft": 128, "lp": 128},
                     templates="imagenet", lr={"ft": 1e-4, "lpft": 1e-5}, lp_solver={"lp": "sgd", "lpft": "sgd"},
                     lp_sgd_lrs=[0.01, 0.03, 0.1], lp_sgd_epochs=5, select_epoch={"flyp": "last"}),
}
# Test backbones run every benchmark at their native 32 px.
BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny_cnn": dict(image_size=32),
    "tiny_clip": dict(image_size=32),
}
PAIR_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # Offline default: lite0 at 64 px on 8x8 digits; no augmentation (a flipped digit is another digit).
    # Learning rates from seed-0 runs judged on ID validation only: FT 3e-2 (99.7% ID val); LP-FT with
    # frozen BatchNorm diverges at 1e-3 and above, and 1e-4 / 3e-5 / 1e-5 end within one validation image
    # of each other, so the paper's usual 1e-4 is kept. WiSE-FT's fine-tuning stage (train-mode BatchNorm,
    # from the LP head) uses 3e-3, not tuned.
    ("digits", "efficientnet_lite0"): dict(
        image_size=64, augment=False, lp_train_augment=False, batch_size=32, epochs=6,
        lr={"ft": 3e-2, "lpft": 1e-4, "wiseft": 3e-3}, lp_num_cs=20,
    ),
    ("digits", "tiny_cnn"): dict(image_size=32, augment=False, lp_train_augment=False, batch_size=32,
                                 epochs=2, lr={"ft": 1e-2, "lpft": 1e-3, "wiseft": 1e-3}, lp_num_cs=10),
    # The offline lab (lpft/vision/lab, docs/lab.md): the SimCLR-pretrained 8x8 ResNet; 30 epochs of batch 64, no
    # augmentation. Learning rates: the lab sweep's choice by mean ID-val accuracy over 5 seeds (python -m
    # lpft.vision.lab; FT grid 3e-3..0.1, LP-FT grid 3e-4..1e-2); WiSE-FT's stage (from the LP head) is not tuned.
    ("digits", "digits_simclr"): dict(pretrained="s2000-p0.2", augment=False, lp_train_augment=False, batch_size=64,
                                      epochs=30, lr={"ft": 3e-2, "lpft": 3e-3, "wiseft": 1e-3}),
    ("digits", "tiny_clip"): dict(image_size=32, augment=False, lp_train_augment=False, batch_size=32,
                                  epochs=2, lr={"ft": 1e-3, "lpft": 1e-4, "wiseft": 1e-4, "flyp": 1e-4},
                                  lp_num_cs=10, warmup_steps={"flyp": 0}),  # a 2-epoch smoke run has no warm-up
    # WiSE-FT protocol for CLIP on ImageNet (Wortsman et al. 2022, Sec. 3; docs/protocols.md).
    ("imagenet", "clip_vit_b16"): dict(lr={"ft": 1e-4, "lpft": 1e-5, "wiseft": 3e-5, "flyp": 1e-5}),
    ("imagenet", "clip_vit_b32"): dict(lr={"ft": 1e-4, "lpft": 1e-5, "wiseft": 3e-5}),
    ("imagenet", "clip_vit_l14"): dict(lr={"ft": 1e-4, "lpft": 1e-5, "wiseft": 3e-5}),
    # FLYP's FMoW command (locuslab/FLYP README.md:54; its FMoW split is not lpft's, docs/methods.md "FLYP")
    ("fmow", "clip_vit_b16"): dict(lr={"flyp": 1e-5}, weight_decay={"flyp": 0.2}, batch_size={"flyp": 256},
                                   epochs={"flyp": 20}),
}


def _choose_protocol(cfg: RunConfig) -> str | None:
    if cfg.protocol is not None:
        if cfg.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {cfg.protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
        if cfg.method == "zeroshot":
            raise ValueError("--protocol sets the fine-tuning / probing recipe; method 'zeroshot' does not train")
        return cfg.protocol
    if cfg.method == "zeroshot":
        return None
    # WiSE-FT's own protocol for zero-shot CLIP models (FLYP's recipe builds on it); LP-FT's everywhere else
    return "wiseft" if cfg.method in ("wiseft", "flyp") and is_clip_name(cfg.backbone) else "lpft"


def resolve_config(cfg: RunConfig, provenance: dict[str, str] | None = None) -> RunConfig:
    """Fill every ``None`` field of ``cfg`` from the presets and protocol defaults (returns a copy).

    Args:
        cfg: the requested config; fields that are not ``None`` are kept as given.
        provenance: if a dict is passed, it receives ``{field: layer}`` for every field, where layer is
            ``"given"``, ``"pair:<benchmark>/<backbone>"``, ``"backbone:<name>"``, ``"benchmark:<name>"``,
            ``"protocol:<name>"``, ``"method:<name>"`` or ``"derived"`` (a rule of this function).
    """
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; expected one of: {', '.join(METHODS)}")
    cfg = dataclasses.replace(cfg)
    prov: dict[str, str] = {f.name: "given" for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None}
    bench_p = BENCHMARK_PRESETS.get(cfg.benchmark, {})
    if cfg.backbone is None:
        cfg.backbone = bench_p.get("backbone", "efficientnet_lite0")
        prov["backbone"] = f"benchmark:{cfg.benchmark}" if "backbone" in bench_p else "derived"
    protocol = _choose_protocol(cfg)
    if cfg.protocol is None:
        cfg.protocol = protocol
        prov["protocol"] = "derived"
    layers: list[tuple[str, dict[str, Any]]] = []
    pair_p = PAIR_PRESETS.get((cfg.benchmark, cfg.backbone), {})
    if pair_p:
        layers.append((f"pair:{cfg.benchmark}/{cfg.backbone}", pair_p))
    if cfg.backbone in BACKBONE_PRESETS:
        layers.append((f"backbone:{cfg.backbone}", BACKBONE_PRESETS[cfg.backbone]))
    if bench_p:
        layers.append((f"benchmark:{cfg.benchmark}", bench_p))
    if cfg.method == "flyp" and prov.get("protocol") != "given":
        layers.append(("recipe:flyp", FLYP_RECIPE))
    if protocol is not None:
        proto = PROTOCOLS[protocol] if cfg.method in FINETUNE_METHODS else PROTOCOL_COMMON[protocol]
        if prov.get("protocol") == "given":
            # an explicit protocol outranks the presets' optimiser recipe; learning rate, batch size and
            # epochs still come from the presets (falling back to the protocol's values)
            for k in RECIPE_KEYS:
                if getattr(cfg, k) is None and k in proto:
                    setattr(cfg, k, proto[k])
                    prov[k] = f"protocol:{protocol}"
        layers.append((f"protocol:{protocol}", proto))
    layers.append((f"method:{cfg.method}", METHOD_DEFAULTS[cfg.method]))

    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) is not None:
            continue
        for name, layer in layers:
            if f.name in layer:
                val = layer[f.name]
                if isinstance(val, dict):  # per-method values (learning rates)
                    if cfg.method not in val:
                        continue
                    val = val[cfg.method]
                setattr(cfg, f.name, val)
                prov[f.name] = name
                break
    _derive(cfg, prov, [n for n, _ in layers])
    _validate(cfg)
    if provenance is not None:
        provenance.clear()
        provenance.update(prov)
    return cfg


def _derive(cfg: RunConfig, prov: dict[str, str], layer_names: list[str]) -> None:
    """The rules that complete a config after the preset layers (each marked ``derived``)."""
    def put(name: str, value: Any) -> None:
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
            prov[name] = "derived"

    put("preset", " > ".join(layer_names))
    put("templates", "benchmark")
    put("lp_num_cs", 50)
    put("augment", True)
    put("lp_train_augment", cfg.augment)
    put("precision", "fp32")
    put("selection", "heldout")
    put("select_epoch", "best")
    put("lp_solver", "lbfgs")
    put("transforms", "benchmark" if cfg.protocol == "lpft" and cfg.benchmark in OFFICIAL_TRANSFORM_BENCHMARKS
        else "backbone")
    put("eval_batch_size", max(cfg.batch_size or 64, 128))
    if cfg.method == "zeroshot" or (cfg.method == "wiseft" and is_clip_name(cfg.backbone)):
        put("feature_norm", True)  # the zero-shot head classifies L2-normalised image features
    if not is_clip_name(cfg.backbone) and prov.get("feature_norm") != "given":
        cfg.feature_norm = None
        prov["feature_norm"] = "derived"
    if cfg.lp_solver == "sgd":
        put("lp_sgd_lrs", [0.01, 0.03, 0.1])
        put("lp_sgd_epochs", 5)
    elif cfg.method in ("zeroshot", "ft", "flyp") or (cfg.method == "wiseft" and is_clip_name(cfg.backbone)):
        for k in ("lp_sgd_lrs", "lp_sgd_epochs", "lp_num_cs", "lp_train_augment"):
            if prov.get(k) != "given":  # no linear probe in these methods
                setattr(cfg, k, None)
                prov.pop(k, None)
    else:
        for k in ("lp_sgd_lrs", "lp_sgd_epochs"):
            if prov.get(k) != "given":
                setattr(cfg, k, None)
                prov.pop(k, None)
    derive_modifiers(cfg, prov, put)
    if cfg.method in ("lp", "zeroshot"):
        keep = {"batch_size"} if cfg.lp_solver == "sgd" else set()  # the SGD probe's mini-batch
        for k in FINETUNE_KEYS:
            if k not in keep and (prov.get(k) != "given" or k == "lr"):
                setattr(cfg, k, None)
                prov.pop(k, None)
    derive_method_rules(cfg, prov, put)


def _validate(cfg: RunConfig) -> None:
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    for name, valid in CHOICES.items():
        v = getattr(cfg, name)
        if v is not None and v not in valid:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {v!r}")
    for name in ("lr", "weight_decay", "grad_clip"):
        v = getattr(cfg, name)
        if v is not None and not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    for name in ("epochs", "batch_size"):
        v = getattr(cfg, name)
        if v is not None and v < 1 and not (name == "epochs" and v == 0):
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if not isinstance(cfg.grad_accum, int) or cfg.grad_accum < 1:
        raise ValueError(f"--grad-accum must be a positive integer, got {cfg.grad_accum!r}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.alphas is not None:
        bad = [a for a in cfg.alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"--alphas must lie in [0, 1], got {bad}")
    if cfg.fmow_val is not None and cfg.benchmark != "fmow":
        raise ValueError(f"--fmow-val applies to the fmow benchmark only, not {cfg.benchmark!r}")
    if cfg.feature_norm is not None and not is_clip_name(cfg.backbone):
        raise ValueError(f"feature_norm is a CLIP option; backbone {cfg.backbone!r} is not a CLIP model")
    if cfg.method == "zeroshot" and not is_clip_name(cfg.backbone):
        raise ValueError(f"zero-shot classification needs a CLIP backbone (image + text towers); {cfg.backbone!r} "
                         f"is not one (CLIP backbones: clip_vit_b16, clip_vit_b32, clip_vit_l14, clip_rn50, tiny_clip)")
    if cfg.wiseft_finetune == "linear" and cfg.method == "wiseft" and not is_clip_name(cfg.backbone):
        raise ValueError("--wiseft-finetune linear needs a CLIP backbone (theta_0 = zero-shot head); for "
                         f"{cfg.backbone!r} theta_0 is already the linear probe")
    validate_modifiers(cfg)
    validate_method_rules(cfg)

