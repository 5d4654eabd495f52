"""Show the fully resolved recipe of a run, with where every value comes from, without running anything.

``python -m lpft.vision.protocol --benchmark B [--backbone K] [--method M] [--protocol P] [--json]``

The recipe is :func:`lpft.vision.config.resolve_config` of the request; each field's provenance layer (given,
pair / backbone / benchmark preset, protocol, method default, derived rule) is mapped through :data:`SOURCES`
to a citation: a paper section or a file:line of the official code (``AnanyaKumar/transfer_learning`` for
LP-FT, ``mlfoundations/wise-ft`` for WiSE-FT). The transforms are built by
:func:`lpft.vision.transforms.build_transforms` on a weight-free description of the backbone
(:func:`describe_backbone`), so the command works offline for every backbone. ``docs/protocols.md`` has the
same recipes in prose, with the known ambiguities.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable

from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, make_transforms
from lpft.vision.config import CHOICES, METHODS, PROTOCOLS, RunConfig, default_run_id, is_clip_name, resolve_config
from lpft.vision.configrules import FLYP_SOURCES
from lpft.vision.transforms import build_transforms

__all__ = ["BACKBONE_FACTS", "SOURCES", "BackboneDescription", "cite", "describe_backbone", "describe_recipe",
           "format_recipe", "main"]

TL = "AnanyaKumar/transfer_learning"
WF = "mlfoundations/wise-ft"


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What a registered backbone's weights expect, and its default transform recipe (see lpft.vision.backbones)."""

    family: str
    image_size: int
    mean: tuple
    std: tuple
    interpolation: InterpolationMode
    native_resize: int  # eval Resize before CenterCrop at the native side (at any other side: the side itself)
    train_scale: tuple
    flip: bool


_CLIP = _Facts("clip", 224, CLIP_MEAN, CLIP_STD, InterpolationMode.BICUBIC, 224, (0.9, 1.0), False)
_RESNET = _Facts("resnet", 224, IMAGENET_MEAN, IMAGENET_STD, InterpolationMode.BILINEAR, 256, (0.08, 1.0), True)
#: weight-free descriptions of the registered backbones (checked against built ones in tests/vision/test_protocol.py)
BACKBONE_FACTS: dict[str, _Facts] = {
    "clip_vit_b16": _CLIP, "clip_vit_b32": _CLIP, "clip_vit_l14": _CLIP, "clip_rn50": _CLIP,
    "resnet50": _RESNET, "moco_v2_resnet50": _RESNET, "mocotp_fmow_resnet50": _RESNET,
    "efficientnet_lite0": _Facts("efficientnet", 224, (0.5,) * 3, (0.5,) * 3, InterpolationMode.BICUBIC, 256,
                                 (0.08, 1.0), True),
    "tiny_cnn": _Facts("tiny", 32, (0.5,) * 3, (0.5,) * 3, InterpolationMode.BILINEAR, 32, (0.8, 1.0), False),
    "tiny_clip": dataclasses.replace(_CLIP, image_size=32, native_resize=32),
    # the offline lab's backbone (lpft/vision/lab/backbone.py): the 8x8 values, identity normalisation, no crop
    "digits_simclr": _Facts("tiny", 8, (0.0,) * 3, (1.0,) * 3, InterpolationMode.BOX, 8, None, False),
}


@dataclasses.dataclass
class BackboneDescription:
    """The input side of a backbone (what :func:`build_transforms` reads), without its network or weights."""

    name: str
    family: str
    image_size: int
    norm_mean: tuple
    norm_std: tuple
    interpolation: InterpolationMode
    train_transform: Callable
    eval_transform: Callable


def describe_backbone(name: str, *, image_size: int | None = None, augment: bool = True) -> BackboneDescription:
    """A registered backbone's preprocessing facts and default transforms, without loading weights.

    Args:
        name: a name in :data:`BACKBONE_FACTS`.
        image_size: the side the backbone would be built for (None: its native side).
        augment: as ``create_backbone(augment=...)``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in BACKBONE_FACTS:
        raise ValueError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONE_FACTS)}")
    f = BACKBONE_FACTS[name]
    size = f.image_size if image_size is None else int(image_size)
    resize = f.native_resize if size == f.image_size else size
    train, ev = make_transforms(size, mean=f.mean, std=f.std, interpolation=f.interpolation, resize=resize,
                                train_scale=f.train_scale, flip=f.flip, augment=augment)
    return BackboneDescription(name, f.family, size, f.mean, f.std, f.interpolation, train, ev)


# --- sources ----------------------------------------------------------------------------------------------
_LP = "LP-FT (Kumar et al. 2022)"
_BEST = f"{TL}@03dfb07 scripts/lpft_change_in_reps_and_weights.ipynb (run paths of the best runs)"
_UNVERIFIED = "not found in the LP-FT release: unverified (docs/protocols.md, ImageNet)"
#: field -> {layer key: citation}. Layer keys, most specific first: "<layer>|<method>", "<layer>", "<kind>:*"
#: (kind = given / pair / backbone / benchmark / protocol / method / derived), "*".
SOURCES: dict[str, dict[str, str]] = {
    "backbone": {
        "benchmark:living17": f"{_LP}: {TL} scripts/codalab.sh:27-31 (MoCo-v2 ResNet-50)",
        "benchmark:entity30": f"{_LP}: {TL} scripts/codalab.sh:27-31 (MoCo-v2 ResNet-50)",
        "benchmark:cifar10": f"{_LP}: {TL} scripts/codalab.sh:11-13 (default model, MoCo-v2 ResNet-50)",
        "benchmark:domainnet": f"{TL} scripts/codalab.sh:16-18 (clip_resnet50); issue #3",
        "benchmark:fmow": f"{TL} scripts/codalab.sh:22-24; scripts/run_adaptation_experiments.py:1060-1068 (MoCo-TP)",
        "benchmark:imagenet": f"{TL} scripts/run_adaptation_experiments.py:1137-1143, 1632-1638 (CLIP ViT-B/16)",
        "*": "lpft: the offline default backbone (no official counterpart)",
    },
    "protocol": {"derived": "lpft: WiSE-FT's protocol for wiseft and flyp on a CLIP backbone, LP-FT's otherwise "
                            "(lpft/vision/config.py)"},
    "optimizer": {"protocol:lpft": f"{TL} configs/adaptation/resnet50_transfer.yaml:13-17 (SGD)",
                  "protocol:wiseft": f"{WF} src/models/finetune.py:61-62 (AdamW)"},
    "momentum": {"protocol:lpft": f"{TL} configs/adaptation/resnet50_transfer.yaml:17",
                 "protocol:wiseft": "not used by AdamW"},
    "weight_decay": {
        "protocol:lpft": f"{TL}@36fb2ef configs/adaptation/resnet50_transfer.yaml:13-17 sets none (torch default 0); "
                         f"HEAD :18 sets 0.0",
        "protocol:wiseft": f"{WF} src/args.py:81-86 (0.1, all parameters, src/models/finetune.py:61-62)"},
    "warmup_steps": {
        "protocol:lpft": f"none: {TL} configs/adaptation/living17.yaml:15-18 (CosineAnnealingLR only)",
        "protocol:wiseft": f"{WF} src/args.py:93-97; src/models/utils.py:15-32 (500 steps)"},
    "grad_clip": {
        "protocol:lpft": f"none: {TL} unlabeled_extrapolation/baseline_train.py:421-422 (max_grad_norm unset)",
        "protocol:wiseft": f"{WF} src/models/finetune.py:89 (global norm 1.0)"},
    "schedule": {
        "protocol:lpft": f"{TL} configs/adaptation/living17.yaml:15-18; baseline_train.py:604-607, 659-660 "
                         f"(CosineAnnealingLR(T_max=epochs), stepped per epoch)",
        "protocol:wiseft": f"{WF} src/models/utils.py:15-32; src/models/finetune.py:64, 74-75 (per step)"},
    "batch_size": {
        "protocol:lpft": f"{TL} configs/adaptation/resnet50_transfer.yaml:5 (release; DomainNet HEAD: 32, "
                         f"docs/protocols.md)",
        "protocol:wiseft": f"{WF} README.md:82-84; src/args.py:98-102",
        "benchmark:imagenet": f"{TL} configs/adaptation/imagenet.yaml:8"},
    "epochs": {
        "protocol:lpft": f"{TL} configs/adaptation/living17.yaml:7",
        "protocol:wiseft": f"{WF} README.md:82-84",
        "benchmark:living17": f"{TL} configs/adaptation/living17.yaml:7",
        "benchmark:entity30": f"{TL} configs/adaptation/entity30.yaml:7",
        "benchmark:cifar10": f"{TL} configs/adaptation/cifar_stl.yaml:7",
        "benchmark:domainnet": f"{TL} configs/adaptation/domainnet.yaml:7",
        "benchmark:fmow": f"{TL} configs/adaptation/fmow.yaml:7",
        "benchmark:imagenet": f"{TL} configs/adaptation/imagenet.yaml:7"},
    "lr": {
        "benchmark:domainnet": f"{_BEST}; {TL} issue #3 (FT 1e-3, LP-FT 3e-7)",
        "benchmark:fmow": f"{_BEST} (tuned with the MoCo-TP backbone)",
        "benchmark:imagenet": _UNVERIFIED,
        "benchmark:*": _BEST,
        "pair:imagenet/*|wiseft": f"{WF} README.md:83 (3e-5)",
        "pair:imagenet/*": _UNVERIFIED,
        "protocol:wiseft": f"{WF} README.md:83 (3e-5)",
        "method:*": "lpft default: no official value for this benchmark and backbone",
    },
    "freeze_bn": {
        "method:lpft": f"{TL} scripts/run_adaptation_experiments.py:1771-1772 (use_net_val_mode); "
                       f"baseline_train.py:349-350",
        "method:ft": f"{TL} configs/adaptation/resnet50_transfer.yaml:11; baseline_train.py:349-352 (train mode)",
        "method:wiseft": f"{WF} src/models/finetune.py:54, 67 (model.train())"},
    "select_epoch": {
        "protocol:lpft": f"{TL} scripts/summarize_results.py:44-55 (best val_metric epoch)",
        "protocol:wiseft": f"{WF} src/models/finetune.py:104-120; src/wise_ft.py:58, 66 (last epoch)",
        "derived": "lpft: the best epoch on the selection set"},
    "precision": {
        "protocol:lpft": f"fp32: {TL} unlabeled_extrapolation/models/clip_model.py:86; no autocast in "
                         f"baseline_train.py",
        "protocol:wiseft": f"fp32: {WF} clip/model.py:437-438; no autocast in src/models/finetune.py",
        "*": "fp32 as both papers (bf16 is opt-in, docs/protocols.md)"},
    "feature_norm": {
        "protocol:lpft": f"raw projected embedding: {TL} unlabeled_extrapolation/models/clip_model.py:197-198",
        "protocol:wiseft": f"L2-normalised: {WF} src/models/modeling.py:35-50; src/models/zeroshot.py:35-58",
        "derived": f"L2-normalised for the zero-shot head: {WF} src/models/modeling.py:35-50"},
    "selection": {
        "protocol:*": "the official selection set (docs/protocols.md, Selection sets)",
        "derived": "lpft default: a seeded held-out part of train (docs/protocols.md, Selection sets)"},
    "fmow_val": {"*": f"ambiguous: wilds@v1.1.0 fmow_dataset.py:66, 131-133 ('val' = ID Val) vs wilds>=1.2.1 "
                      f"(OOD Val); {TL} configs/adaptation/datasets_fmow_all.yaml:30-40 (docs/protocols.md, FMoW)"},
    "lp_solver": {
        "benchmark:imagenet": f"torch SGD linear probe: {TL} scripts/run_adaptation_experiments.py:1495-1499, "
                              f"1632-1638",
        "*": f"L2 logistic regression, sklearn lbfgs max_iter=200 in {TL} unlabeled_extrapolation/log_reg_sk.py:70; "
             f"lpft solves the same objective with its own L-BFGS (docs/protocols.md, Linear probe)"},
    "lp_num_cs": {"*": f"{TL} unlabeled_extrapolation/log_reg_sk.py:69 (np.logspace(-7, 2, n)); "
                       f"scripts/run_adaptation_experiments.py:410, 428-431 (n = 50)"},
    "lp_sgd_lrs": {"*": f"{TL} scripts/run_adaptation_experiments.py:1495-1499"},
    "lp_sgd_epochs": {"*": f"{TL} scripts/run_adaptation_experiments.py:1632-1638 (torch_linprobe_epochs5 checkpoint)"},
    "lp_train_augment": {"*": f"{TL} scripts/run_adaptation_experiments.py:409-424; extract_features.py:154-163 "
                              f"(train features through the train transform)"},
    "alphas": {"*": f"{WF} README.md:74, 92 (alpha in 0, 0.1, ..., 1)"},
    "templates": {"benchmark:imagenet": f"{WF} openai_imagenet_template (80 templates; open_clip's list is identical)",
                  "*": "lpft: the benchmark's own templates"},
    "image_size": {"backbone:*": "lpft: the test backbone's native side", "pair:*": "lpft: offline digits preset"},
    "augment": {"pair:*": "lpft: offline digits preset (a flipped digit is another digit)",
                "*": "lpft: augmentation on; the transform recipe decides what it is"},
    "transforms": {"*": "lpft: the benchmark's official transforms under the LP-FT protocol where an official "
                        "config exists, the backbone's own otherwise (lpft/vision/config.py)"},
    "wiseft_finetune": {
        "linear": f"{WF} src/models/finetune.py:26-32; src/datasets/common.py:94-139 (--freeze-encoder: the zero-shot "
                  f"head fine-tuned with the same AdamW recipe on cached un-augmented features)",
        "end_to_end": f"{WF} src/models/finetune.py (end to end: every image-encoder and head parameter trained)"},
    "grad_accum": {"*": "lpft default: no gradient accumulation (batch_size is the global batch)"},
}
SOURCES.update({f: {**SOURCES.get(f, {}), **d} for f, d in FLYP_SOURCES.items()})  # FLYP (lpft.vision.configrules)
#: per-benchmark citation of the official selection set (scripts/run_adaptation_experiments.py val_metric)
SELECTION_SOURCES = {
    "living17": f"{TL} configs/adaptation/datasets_living17.yaml:37-44, 54-56; run_adaptation_experiments.py:566-568",
    "entity30": f"{TL} configs/adaptation/datasets_entity30.yaml:37-44, 54-56; run_adaptation_experiments.py:792-794",
    "cifar10": f"{TL} scripts/run_adaptation_experiments.py:840-843 (test_acc/cifar10-test)",
    "domainnet": f"{TL} scripts/run_adaptation_experiments.py:870-873; configs/adaptation/datasets_domainnet.yaml:"
                 f"34-41",
    "fmow": f"{TL} scripts/run_adaptation_experiments.py:886-889; configs/adaptation/datasets_fmow.yaml:42-50",
    "imagenet": f"{TL} configs/adaptation/datasets_imagenet.yaml:60-61; run_adaptation_experiments.py:808-810",
}
_KIND_DEFAULT = {"given": "given on the command line", "default": "lpft default (RunConfig)",
                 "pair": "lpft preset for this benchmark and backbone",
                 "backbone": "lpft preset for this backbone", "benchmark": "lpft preset for this benchmark",
                 "method": "lpft default of the method", "derived": "lpft rule (lpft/vision/config.py)"}
FIELDS = ("optimizer", "momentum", "lr", "batch_size", "grad_accum", "epochs", "schedule", "warmup_steps",
          "grad_clip", "weight_decay", "precision", "freeze_bn", "select_epoch", "feature_norm", "selection",
          "fmow_val", "lp_solver", "lp_num_cs", "lp_sgd_lrs", "lp_sgd_epochs", "lp_train_augment", "augment",
          "image_size", "transforms", "alphas", "wiseft_finetune", "templates")


def cite(field: str, layer: str, cfg: RunConfig) -> str:
    """The citation of ``field`` set by provenance ``layer`` (see :data:`SOURCES`) in the resolved ``cfg``."""
    table = SOURCES.get(field, {})
    if field == "wiseft_finetune":  # cite the variant, whoever chose it
        what = table.get(str(cfg.wiseft_finetune), "")
        return f"{_KIND_DEFAULT.get(layer, layer)}; {what}" if layer in ("given", "default") else what
    if layer == "given":
        return _KIND_DEFAULT["given"]
    kind = layer.split(":", 1)[0]
    if field == "selection" and kind != "derived":
        if cfg.protocol == "wiseft" and cfg.benchmark == "imagenet":
            return (f"{WF} src/datasets/imagenet.py:24-37 (all of ImageNet train; ImageNet val is reported, "
                    f"theta_1 is the last epoch)")
        if cfg.benchmark in SELECTION_SOURCES:
            return SELECTION_SOURCES[cfg.benchmark]
    if cfg.protocol == "wiseft" and kind in ("benchmark", "pair") and field in PROTOCOLS["wiseft"] \
            and PROTOCOLS["wiseft"][field] == getattr(cfg, field) and "protocol:wiseft" in table:
        return table["protocol:wiseft"]  # the preset agrees with WiSE-FT's own value: cite WiSE-FT
    keys = [f"{layer}|{cfg.method}", layer]
    if kind == "pair":
        keys += [f"pair:{cfg.benchmark}/*|{cfg.method}", f"pair:{cfg.benchmark}/*"]
    keys += [f"{kind}:*|{cfg.method}", f"{kind}:*", "*"]
    for k in keys:
        if k in table:
            return table[k]
    if kind == "protocol":
        return f"the {layer.split(':', 1)[1]} protocol (docs/protocols.md)"
    return _KIND_DEFAULT.get(kind, layer)


def _one_line(transform) -> str:
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return repr(transform)
    return "Compose(" + ", ".join(" ".join(repr(s).split()) for s in steps) + ")"


def _classes(bench) -> dict[str, Any]:
    out: dict[str, Any] = {"num_classes": bench.num_classes, "names": list(bench.classnames)}
    if bench.name in ("living17", "entity30"):
        from lpft.vision.data.breeds import breeds_classes

        cls = breeds_classes(bench.name)
        out["subclasses"] = {"source (ID)": sum(len(c["source_wnids"]) for c in cls),
                             "target (OOD)": sum(len(c["target_wnids"]) for c in cls)}
    return out


def describe_recipe(benchmark: str, backbone: str | None = None, method: str = "lpft", protocol: str | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """The resolved recipe of a run as a JSON-ready dict (nothing is built or run).

    Args:
        benchmark / backbone / method / protocol: as ``python -m lpft.vision.run``; None takes the preset.
        overrides: any other :class:`~lpft.vision.config.RunConfig` field (e.g. ``selection="heldout"``).

    Returns:
        ``method, backbone, benchmark, protocol``, every field of :data:`FIELDS`, ``c_grid``, ``run_id``,
        ``selection_used`` / ``selection_set``, ``classes``, ``splits``, ``ood_splits``, ``train_transform`` /
        ``eval_transform`` (one-line reprs), ``transforms_source`` / ``transforms_notes``, ``provenance``
        (field -> layer; ``"default"`` for a RunConfig default nobody set) and ``sources`` (field -> citation).
        Fields that do not apply to the method are None (e.g. the optimiser of ``lp``, the LP solver of ``ft``).

    Raises:
        ValueError: unknown benchmark / backbone / method, zero-shot on a non-CLIP backbone, or any invalid
            combination ``resolve_config`` rejects; the message lists the valid choices.
    """
    from lpft.vision.data import get_benchmark

    bench = get_benchmark(benchmark)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    prov: dict[str, str] = {}
    cfg = resolve_config(RunConfig(method=method, backbone=backbone, benchmark=benchmark, protocol=protocol,
                                   **overrides), prov)
    if cfg.backbone not in BACKBONE_FACTS:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; expected one of: {', '.join(BACKBONE_FACTS)}")
    if method == "zeroshot" and not is_clip_name(cfg.backbone):
        clips = [b for b in BACKBONE_FACTS if is_clip_name(b)]
        raise ValueError(f"zero-shot needs a CLIP backbone (image and text towers); {cfg.backbone!r} is not one. "
                         f"Valid: {', '.join(clips)}")
    desc = describe_backbone(cfg.backbone, image_size=cfg.image_size, augment=bool(cfg.augment))
    spec = build_transforms(benchmark, desc, protocol=cfg.protocol, transforms=cfg.transforms,
                            augment=bool(cfg.augment), image_size=cfg.image_size)
    used = bench.selection_used(cfg.selection) if cfg.selection else None
    out: dict[str, Any] = {"method": cfg.method, "backbone": cfg.backbone, "benchmark": cfg.benchmark,
                           "protocol": cfg.protocol, "run_id": default_run_id(cfg)}
    out.update({f: getattr(cfg, f) for f in FIELDS})
    has_lp = cfg.method in ("lp", "lpft") or (cfg.method == "wiseft" and not is_clip_name(cfg.backbone))
    if not has_lp:  # no linear probe in this method (the config keeps the protocol's solver)
        out["lp_solver"] = None
    if out["lp_solver"] != "lbfgs":
        out["lp_num_cs"] = None
    if cfg.method != "wiseft":
        out["wiseft_finetune"] = out["alphas"] = None
    if cfg.lp_num_cs is not None and out["lp_solver"] == "lbfgs":
        out["c_grid"] = f"np.logspace(log10({cfg.lp_c_min:g}), log10({cfg.lp_c_max:g}), {cfg.lp_num_cs})"
    out["selection_used"] = used
    out["selection_set"] = (getattr(bench, "paper_selection", None) if used == "paper" else
                            "a seeded held-out part of the training split (lpft.vision.data)") if used else None
    out.update(classes=_classes(bench), splits=dict(bench.splits), ood_splits=list(bench.ood_splits),
               train_transform=_one_line(spec.train), eval_transform=_one_line(spec.eval),
               transforms_source=spec.source, transforms_notes=spec.notes)
    passed = {"benchmark", "method", *overrides} | {k for k, v in (("backbone", backbone), ("protocol", protocol))
                                                    if v is not None}
    shown = ("backbone", "protocol", *FIELDS)
    out["provenance"] = {f: (prov[f] if prov[f] != "given" or f in passed else "default")
                         for f in shown if f in prov and out.get(f) is not None}
    sources = {f: cite(f, layer, cfg) for f, layer in out["provenance"].items()}
    if "c_grid" in out:
        out["provenance"]["c_grid"] = out["provenance"].get("lp_num_cs", "derived")
        sources["c_grid"] = cite("lp_num_cs", out["provenance"]["c_grid"], cfg)
    sources["train_transform"] = sources["eval_transform"] = spec.source
    if used is not None and used != cfg.selection:
        sources["selection"] += f"; {bench.name} has no official selection set, held-out validation is used"
    out["sources"] = sources
    return out


def format_recipe(recipe: dict[str, Any]) -> str:
    """Human-readable text of :func:`describe_recipe`'s dict: each value, its layer and its source."""
    r = recipe
    proto = f"protocol {r['protocol']}" if r["protocol"] else "no protocol (zero-shot does not train)"
    lines = [f"{r['method']} on {r['benchmark']} with {r['backbone']}: {proto} (run id {r['run_id']}); "
             f"nothing is run", ""]
    prov, src = r["provenance"], r["sources"]
    for f in ("backbone", "protocol", *FIELDS, "c_grid"):
        if f not in r or r[f] is None:
            continue
        lines.append(f"  {f:<17} {r[f]}")
        if f in src:
            lines.append(f"  {'':<17}   [{prov.get(f, 'protocol')}] {src[f]}")
    if r.get("selection_set"):
        lines.append(f"  {'selection set':<17} {r['selection_set']}")
    c = r["classes"]
    names = ", ".join(c["names"][:8]) + (", ..." if c["num_classes"] > 8 else "")
    lines += ["", f"  classes           {c['num_classes']}: {names}"]
    if "subclasses" in c:
        lines.append(f"  subclasses        {c['subclasses']}")
    id_splits = [s for s, sh in r["splits"].items() if sh == "id"]
    lines.append(f"  splits            ID: {', '.join(id_splits)}; OOD: {', '.join(r['ood_splits'])}")
    lines += ["", f"  train transform   {r['train_transform']}", f"  eval transform    {r['eval_transform']}",
              f"  transforms from   {r['transforms_source']}", f"  notes             {r['transforms_notes']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for an invalid request)."""
    p = argparse.ArgumentParser(prog="python -m lpft.vision.protocol", description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", required=True, help="a registered benchmark (lpft.vision.data)")
    p.add_argument("--backbone", default=None, help="a registered backbone (default: the benchmark's preset)")
    p.add_argument("--method", default="lpft", help=f"one of {', '.join(METHODS)} (default lpft)")
    p.add_argument("--protocol", default=None, help="lpft | wiseft (default: by method and backbone)")
    options = ("selection", "fmow_val", "transforms", "precision", "wiseft_finetune")
    for name in options:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, choices=CHOICES[name])
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k) for k in (*options, "image_size") if getattr(args, k) is not None}
    try:
        recipe = describe_recipe(args.benchmark, args.backbone, args.method, args.protocol, **overrides)
    except ValueError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(recipe, indent=2) if args.json else format_recipe(recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
