"""ResNet-50 backbones (torchvision architecture, 2048-d average-pooled features, ImageNet normalisation).

* ``resnet50``: torchvision's ImageNet-supervised weights.
* ``moco_v2_resnet50``: MoCo-v2 (800 epochs, ImageNet), LP-FT's backbone for BREEDS and CIFAR.
* ``mocotp_fmow_resnet50``: MoCo-v2 with temporal positives pretrained on FMoW (Ayush et al. 2021),
  LP-FT's backbone for FMoW. Weights only from a local file.

Both MoCo checkpoints are loaded as LP-FT's ``load_moco`` does (``transfer_learning
unlabeled_extrapolation/models/imnet_resnet.py:25-39``): the query encoder, without its projection head.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.base import Backbone, register_backbone
from lpft.vision.backbones.transforms import IMAGENET_MEAN, IMAGENET_STD, make_transforms
from lpft.vision.backbones.weights import (
    WeightsMismatchError, WeightsNotFoundError, file_id, is_random_tag, load_file, load_strict, random_id,
    strip_prefix, torch_hub_file,
)

__all__ = ["MOCO_V2_URL", "MOCOTP_FILE", "MOCOTP_URL", "load_moco_state_dict"]

MOCO_V2_URL = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"
#: LP-FT's name for the MoCo-TP FMoW checkpoint (``run_adaptation_experiments.py:1065``).
MOCOTP_FILE = "mocotp_checkpoint_0200.pth.tar"
#: The authors' release of MoCo-v2-TP, 200 epochs (geography-aware-ssl ``README.md:91``).
MOCOTP_URL = "https://zenodo.org/record/7379715/files/moco_tp.pth.tar"


def _resnet50_trunk() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _finish(name: str, net: nn.Module, weights_id: str, size, augment, tv_weights=None) -> Backbone:
    """Drop ``fc`` and attach the ImageNet preprocessing (a torchvision preset's, if given)."""
    net.fc = nn.Identity()
    interpolation, resize_native, crop_native = InterpolationMode.BILINEAR, 256, 224
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if tv_weights is not None:
        preset = tv_weights.transforms()
        interpolation = preset.interpolation
        resize_native, crop_native = int(preset.resize_size[0]), int(preset.crop_size[0])
        mean, std = tuple(preset.mean), tuple(preset.std)
    size = crop_native if size is None else int(size)
    resize = resize_native if size == crop_native else size
    train_tf, eval_tf = make_transforms(
        size, mean=mean, std=std, interpolation=interpolation, resize=resize,
        train_scale=(0.08, 1.0), flip=True, augment=augment,
    )
    return Backbone(name, net, 2048, weights_id, family="resnet", image_size=size, norm_mean=mean,
                    norm_std=std, interpolation=interpolation, train_transform=train_tf, eval_transform=eval_tf)


@register_backbone("resnet50", "resnet")
def _resnet50(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """torchvision ResNet-50, ImageNet-supervised (default ``IMAGENET1K_V1``), 2048-d avg-pooled features."""
    from torchvision.models import ResNet50_Weights

    net = _resnet50_trunk()
    tag = "IMAGENET1K_V1" if pretrained is None else str(pretrained)
    tv_weights = None
    if weights is not None:
        load_strict(net, strip_prefix(load_file(weights), "module."), f"file {weights}")
        weights_id = file_id(weights)
    elif is_random_tag(tag):
        weights_id = random_id(net, torch.initial_seed())
    else:
        try:
            tv_weights = ResNet50_Weights[tag.upper()]
        except KeyError:
            raise ValueError(
                f"unknown pretrained tag {tag!r} for resnet50; expected one of "
                f"{[w.name for w in ResNet50_Weights]} or 'none'"
            ) from None
        path = torch_hub_file(tv_weights.url, f"torchvision ResNet-50 weights {tv_weights.name}")
        load_strict(net, torch.load(path, map_location="cpu", weights_only=True), f"file {path}")
        weights_id = tv_weights.name
    return _finish("resnet50", net, weights_id, image_size, augment, tv_weights)


def load_moco_state_dict(path: str | os.PathLike, net: nn.Module) -> None:
    """Load a MoCo (v1/v2, MoCo-TP) checkpoint's query encoder into a torchvision ResNet-50, as LP-FT's
    ``load_moco``.

    The checkpoint is ``{"epoch", "arch", "state_dict", "optimizer"}`` with the state dict of the
    DDP-wrapped MoCo model: ``module.encoder_q.*`` (query encoder; with ``--mlp`` its ``fc`` is the MLP
    projection ``fc.0`` / ``fc.2``), ``module.encoder_k.*``, ``module.queue``, ``module.queue_ptr``. Keeps
    ``module.encoder_q.*`` (prefix stripped), drops the ``fc`` projection head, and requires that the only
    keys left missing are ``fc.weight`` / ``fc.bias`` and nothing is unexpected or mis-shaped.

    Raises:
        WeightsMismatchError: the file is not a MoCo checkpoint for this architecture.
    """
    sd = load_file(path)
    prefix = "module.encoder_q."
    enc = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not enc:
        raise WeightsMismatchError(
            f"{path} is not a MoCo checkpoint: no keys start with {prefix!r} "
            f"(first keys: {list(sd)[:5]})"
        )
    enc = {k: v for k, v in enc.items() if not k.startswith("fc.")}
    own = net.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in enc.items() if k in own and v.shape != own[k].shape]
    if shapes:
        raise WeightsMismatchError(f"MoCo checkpoint {path} has mis-shaped tensors: {shapes[:8]}")
    result = net.load_state_dict(enc, strict=False)
    missing = set(result.missing_keys)
    if missing != {"fc.weight", "fc.bias"} or result.unexpected_keys:
        raise WeightsMismatchError(
            f"MoCo checkpoint {path} does not fit torchvision ResNet-50: expected exactly fc.weight and "
            f"fc.bias missing, got missing {sorted(missing - {'fc.weight', 'fc.bias'})[:8]} "
            f"(besides fc) and unexpected {sorted(result.unexpected_keys)[:8]}"
        )


@register_backbone("moco_v2_resnet50", "resnet")
def _moco_v2_resnet50(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """ResNet-50 with MoCo-v2 (800 epochs) weights from a MoCo-format checkpoint; 2048-d features.

    Default weights: ``moco_v2_800ep_pretrain.pth.tar`` in torch hub's checkpoint cache (downloaded from
    ``dl.fbaipublicfiles.com`` unless offline); or pass ``weights=PATH`` to a MoCo checkpoint.
    """
    net = _resnet50_trunk()
    tag = None if pretrained is None else str(pretrained).lower()
    if weights is not None:
        path = str(weights)
    elif is_random_tag(tag):
        return _finish("moco_v2_resnet50", net, random_id(net, torch.initial_seed()), image_size, augment)
    elif tag in (None, "moco_v2_800ep"):
        path = torch_hub_file(MOCO_V2_URL, "MoCo-v2 ResNet-50 weights (moco_v2_800ep_pretrain.pth.tar)")
    else:
        raise ValueError(f"unknown pretrained tag {pretrained!r} for moco_v2_resnet50; expected "
                         f"'moco_v2_800ep' or 'none' (or pass weights=PATH)")
    load_moco_state_dict(path, net)
    return _finish("moco_v2_resnet50", net, file_id(path), image_size, augment)


@register_backbone("mocotp_fmow_resnet50", "resnet")
def _mocotp_fmow_resnet50(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """ResNet-50 pretrained with MoCo-v2 + temporal positives on FMoW (Ayush et al. 2021, "Geography-Aware
    Self-Supervised Learning"): LP-FT's FMoW backbone; 2048-d features, ImageNet normalisation.

    Sources: LP-FT's model ``mocotp_fmow_resnet50`` = ``imnet_resnet.ResNet50`` with ``pretrain_style
    'mocov2'`` and ``checkpoint_rel_path 'mocotp_checkpoint_0200.pth.tar'`` (``transfer_learning
    scripts/run_adaptation_experiments.py:1060-1068``; ``configs/adaptation/fmow.yaml:11-14``; run by
    ``scripts/codalab.sh:22-24``), loaded by ``load_moco`` (``unlabeled_extrapolation/models/
    imnet_resnet.py:25-39``); FMoW inputs normalised with ImageNet mean/std (``configs/adaptation/
    datasets_fmow.yaml``). Checkpoint layout: ``geography-aware-ssl moco_fmow/main_moco_tp.py:326-331``
    saves ``{"epoch", "arch", "state_dict", "optimizer"}`` of the DDP-wrapped MoCo model
    (``moco_fmow/moco/builder.py:26-42``; trained with ``--mlp``, so ``fc`` is a 2-layer MLP).

    The weights are never downloaded: pass the checkpoint as ``weights=PATH`` (``--weights``). The authors
    release MoCo-v2-TP (200 epochs) as ``moco_tp.pth.tar`` (:data:`MOCOTP_URL`); LP-FT's copy is named
    ``mocotp_checkpoint_0200.pth.tar``. ``pretrained="none"`` gives a random initialisation.
    """
    net = _resnet50_trunk()
    if weights is None:
        if is_random_tag(pretrained):
            return _finish("mocotp_fmow_resnet50", net, random_id(net, torch.initial_seed()), image_size, augment)
        if pretrained is not None:
            raise ValueError(f"mocotp_fmow_resnet50 has no pretrained tags (got {pretrained!r}): pass the "
                             f"checkpoint with weights=PATH, or pretrained='none' for a random init")
        raise WeightsNotFoundError(
            f"backbone mocotp_fmow_resnet50 needs its weights file {MOCOTP_FILE}, passed with --weights PATH "
            f"(create_backbone(..., weights=PATH)); these weights are never downloaded. It is the MoCo-v2-TP "
            f"FMoW checkpoint of Ayush et al. 2021 (github.com/sustainlab-group/geography-aware-ssl), released "
            f"as {MOCOTP_URL}."
        )
    load_moco_state_dict(weights, net)
    return _finish("mocotp_fmow_resnet50", net, file_id(weights), image_size, augment)
