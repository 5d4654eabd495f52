"""The export targets of :mod:`lpft.vision.export`: one library format per backbone family.

Each target turns a :class:`~lpft.vision.backbones.Classifier` into a state dict in the library's own key layout,
says how to load it (as runnable Python), loads it back exactly that way, and computes logits with it, so
the export can check itself before it is kept:

* ``open_clip`` (CLIP backbones): the whole CLIP model (fine-tuned image tower, pretrained text tower and
  ``logit_scale``) for ``open_clip.create_model_and_transforms(arch, pretrained=FILE, ...)``; the linear
  head stays a separate tensor file, applied to the (L2-normalised, if the run did) image embedding.
* ``timm`` (``efficientnet_lite0``): a ``tf_efficientnet_lite0`` state dict whose ``classifier`` is the head.
* ``torchvision`` (ResNet-50 backbones): a ``torchvision.models.resnet50(num_classes=N)`` state dict whose
  ``fc`` is the head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FAMILY_TARGETS", "TARGETS", "clip_arch", "export_state_dict", "load_exported", "exported_logits",
           "load_instructions", "open_clip_model_config", "valid_targets"]

#: library format of each backbone family (``tiny``: test backbones; ``tiny_clip`` is family ``clip``)
FAMILY_TARGETS: dict[str, tuple[str, ...]] = {
    "clip": ("open_clip",), "efficientnet": ("timm",), "resnet": ("torchvision",), "tiny": (),
}
TARGETS = ("open_clip", "timm", "torchvision")
#: open_clip architecture of each CLIP backbone (as registered in lpft/vision/backbones/clip.py and tiny.py)
_CLIP_ARCHS = {"clip_vit_b16": "ViT-B-16", "clip_vit_b32": "ViT-B-32", "clip_vit_l14": "ViT-L-14",
               "clip_rn50": "RN50", "tiny_clip": "lpft-tiny-clip"}
TIMM_ARCH = "tf_efficientnet_lite0"
TORCHVISION_ARCH = "resnet50"


def valid_targets(backbone: str) -> tuple[str, ...]:
    """The export targets of a registered backbone (empty for the test backbone ``tiny_cnn``)."""
    from lpft.vision.backbones import BACKBONES

    return FAMILY_TARGETS.get(getattr(BACKBONES.get(backbone), "family", None), ())


def clip_arch(backbone) -> str:
    """The open_clip architecture name of a CLIP backbone (``ViT-B-16``, ..., ``lpft-tiny-clip``)."""
    arch = getattr(backbone, "arch", None) or _CLIP_ARCHS.get(backbone.name)
    if arch is None:
        raise ValueError(f"no open_clip architecture known for CLIP backbone {backbone.name!r}")
    return arch


def open_clip_model_config(arch: str) -> dict[str, Any] | None:
    """open_clip's model config of ``arch`` if open_clip does not ship it (the tiny test architecture), so
    that the export can carry it; None for a built-in architecture."""
    import open_clip
    from open_clip import factory

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"open_clip does not know architecture {arch!r}")
    builtin = Path(factory.__file__).parent / "model_configs" / f"{arch}.json"
    return None if builtin.is_file() else cfg


def _clip_kwargs(backbone) -> dict[str, Any]:
    """``create_model`` keywords that rebuild the run's tower: QuickGELU for OpenAI weights (open_clip's plain
    configs use nn.GELU), and the input side when the run changed it (ViT position embeddings were resized)."""
    import open_clip

    kw: dict[str, Any] = {}
    if getattr(backbone, "activation", "gelu") == "quickgelu":
        kw["force_quick_gelu"] = True
    native = open_clip.get_model_config(clip_arch(backbone))["vision_cfg"]["image_size"]
    native = native[0] if isinstance(native, (list, tuple)) else native
    if int(native) != int(backbone.image_size):
        kw["force_image_size"] = int(backbone.image_size)
    return kw


def export_state_dict(model: nn.Module, target: str) -> dict[str, torch.Tensor]:
    """``model`` (a Classifier) as a state dict in ``target``'s key layout (CPU tensors).

    open_clip: the full CLIP model of the backbone with the classifier's image tower (``visual.*``); the head
    is not part of it. timm / torchvision: the backbone network plus the head as ``classifier`` / ``fc``.
    """
    bb = model.backbone
    head = {"weight": model.head.weight.detach().cpu().clone(), "bias": model.head.bias.detach().cpu().clone()}
    if target == "open_clip":
        sd = {k: v.detach().cpu().clone() for k, v in bb.clip_model.state_dict().items()}
        visual = {f"visual.{k}": v.detach().cpu().clone() for k, v in bb.visual.state_dict().items()}
        if not set(visual) <= set(sd):
            raise RuntimeError("the CLIP image tower's keys are not part of the CLIP model's state dict")
        sd.update(visual)
        return sd
    sd = {k: v.detach().cpu().clone() for k, v in bb.net.state_dict().items()}
    name = {"timm": "classifier", "torchvision": "fc"}[target]
    if any(k.startswith(f"{name}.") for k in sd):
        raise RuntimeError(f"the backbone network still has a {name!r} layer; expected it removed")
    sd.update({f"{name}.weight": head["weight"], f"{name}.bias": head["bias"]})
    return sd


def load_exported(target: str, path: str | Path, *, backbone, num_classes: int, model_config_dir=None) -> nn.Module:
    """Load an exported file the way :func:`load_instructions` says (strict), in eval mode."""
    path = str(path)
    if target == "open_clip":
        import open_clip

        if model_config_dir is not None:
            open_clip.add_model_config(model_config_dir)
        model = open_clip.create_model(clip_arch(backbone), pretrained=path, **_clip_kwargs(backbone))
    elif target == "timm":
        import timm

        model = timm.create_model(TIMM_ARCH, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay=dict(file=path, num_classes=num_classes))
    elif target == "torchvision":
        import torchvision

        model = torchvision.models.resnet50(num_classes=num_classes)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    else:
        raise ValueError(f"unknown export target {target!r}; expected one of {TARGETS}")
    return model.eval()


@torch.no_grad()
def exported_logits(target: str, model: nn.Module, images: torch.Tensor, head: dict[str, torch.Tensor] | None = None,
                    feature_norm: bool = False) -> torch.Tensor:
    """Logits of a model loaded by :func:`load_exported` (open_clip: through ``head``)."""
    if target != "open_clip":
        return model(images).float()
    feats = model.encode_image(images).float()
    if feature_norm:
        feats = F.normalize(feats, dim=-1)
    return feats @ head["weight"].float().T + head["bias"].float()


def load_instructions(target: str, *, backbone, num_classes: int, file: str, head_file: str,
                      feature_norm: bool | None, model_config_dir: str | None) -> dict[str, Any]:
    """What the sidecar says about loading: ``arch``, ``kwargs`` of the library call, runnable ``code``
    (``images``: a float tensor ``[N, 3, S, S]`` preprocessed as the run did) and ``notes``."""
    notes: list[str] = []
    if target == "open_clip":
        arch, kw = clip_arch(backbone), _clip_kwargs(backbone)
        args = "".join(f", {k}={v!r}" for k, v in kw.items())
        lines = ["import open_clip, torch"]
        if model_config_dir is not None:
            lines.append(f"open_clip.add_model_config({model_config_dir!r})  # {arch} is not built into open_clip")
            notes.append(f"{arch} is not an open_clip architecture: register its config (add_model_config) first")
        lines += [
            f"model, _, preprocess = open_clip.create_model_and_transforms({arch!r}, pretrained={file!r}{args})",
            "model.eval()",
            f"head = torch.load({head_file!r}, weights_only=True)  # weight [C, D], bias [C], classnames",
            "feats = model.encode_image(images)",
        ]
        if feature_norm:
            lines.append("feats = feats / feats.norm(dim=-1, keepdim=True)  # the run's features are L2-normalised")
        lines.append("logits = feats @ head['weight'].T + head['bias']")
        if kw.get("force_quick_gelu"):
            import open_clip

            alt = (f" (equivalently the architecture '{arch}-quickgelu')"
                   if f"{arch}-quickgelu" in open_clip.list_models() else "")
            notes.append(f"the weights use QuickGELU (OpenAI CLIP): pass force_quick_gelu=True{alt}; without it "
                         f"open_clip builds nn.GELU and the features differ")
        if "force_image_size" in kw:
            notes.append(f"the run used {kw['force_image_size']} px inputs: pass force_image_size (the position "
                         f"embeddings were resized)")
        notes.append("the classifier is the separate head file; open_clip's model holds no classifier")
        return {"arch": arch, "kwargs": kw, "code": "\n".join(lines), "notes": notes}
    if target == "timm":
        call = (f"model = timm.create_model({TIMM_ARCH!r}, pretrained=True, num_classes={num_classes}, "
                f"pretrained_cfg_overlay=dict(file={file!r}, num_classes={num_classes}))")
        notes.append("num_classes must be in pretrained_cfg_overlay too: otherwise timm drops the classifier "
                     "(its pretrained config has 1000 classes) and initialises a random one")
        code = "\n".join(["import timm", call, "model.eval()", "logits = model(images)"])
        return {"arch": TIMM_ARCH, "kwargs": {"num_classes": num_classes}, "code": code, "notes": notes}
    code = "\n".join([
        "import torch, torchvision",
        f"model = torchvision.models.resnet50(num_classes={num_classes})",
        f"model.load_state_dict(torch.load({file!r}, weights_only=True), strict=True)",
        "model.eval()", "logits = model(images)",
    ])
    return {"arch": TORCHVISION_ARCH, "kwargs": {"num_classes": num_classes}, "code": code, "notes": notes}


def write_model_config(arch: str, cfg: dict[str, Any], directory: Path) -> Path:
    """Write open_clip's JSON config of ``arch`` as ``directory/<arch>.json`` (open_clip names a model by its
    config file's stem)."""
    from lpft.vision.io import write_text_atomic

    path = Path(directory) / f"{arch}.json"
    write_text_atomic(path, json.dumps(cfg, indent=2) + "\n")
    return path
