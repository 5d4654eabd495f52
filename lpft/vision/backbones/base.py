"""The backbone contract, the registry, :func:`create_backbone`, and the linear :class:`Classifier`.

Every backbone is a :class:`Backbone`: an ``nn.Module`` mapping images ``[N, 3, H, W]`` to features
``[N, feature_dim]``, carrying what its weights expect of the input (normalisation, interpolation, side),
default transforms built from that, and a ``weights_id`` string naming the weights exactly (a cache key).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.weights import WeightsNotFoundError
from lpft.vision.registry import Registry

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "Backbone",
    "Classifier",
    "create_backbone",
    "has_batchnorm",
    "list_backbones",
    "register_backbone",
]

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")

#: Backbone families: which library / recipe a backbone comes from.
FAMILIES = ("clip", "resnet", "efficientnet", "tiny")


class Backbone(nn.Module):
    """A feature extractor with the preprocessing its weights expect.

    Args:
        name: registry name.
        net: the network, registered as the submodule ``net``; ``net(images)`` gives the features (flattened
            to ``[N, D]``). Subclasses that register their own submodules pass None.
        feature_dim: size ``D`` of the features.
        weights_id: see the attribute.
        family: one of :data:`FAMILIES`.
        image_size / norm_mean / norm_std / interpolation: see the attributes.
        train_transform / eval_transform: the default transforms.

    Attributes:
        name: registry name (e.g. ``"clip_vit_b16"``).
        family: ``"clip"``, ``"resnet"``, ``"efficientnet"`` or ``"tiny"`` (``tiny_clip`` is ``"clip"``).
        feature_dim: size ``D`` of the features returned by :meth:`forward`.
        weights_id: string naming the weights exactly: a library tag (``"IMAGENET1K_V1"``, ``"imagenet"``;
            CLIP: ``"openai:quickgelu"``), ``"file:<path>:<sha256 prefix>"`` for a local file, or
            ``"random:seed<s>:<digest>"`` for a random initialisation (CLIP ids end in the activation).
        image_size: side of the square input the backbone was built for (its weights' native side unless
            ``image_size=`` was given to :func:`create_backbone`); the default transforms produce it.
        norm_mean / norm_std: per-channel normalisation of ``[0, 1]`` RGB inputs the weights expect (tuples).
        interpolation: the torchvision ``InterpolationMode`` the weights were preprocessed with.
        train_transform / eval_transform: PIL image (any mode) -> float tensor ``[3, image_size,
            image_size]``: the backbone's defaults (train augmented unless built with ``augment=False``).
            Plain attributes: a benchmark may assign its own.
        is_clip: whether this is a CLIP image tower (then ``clip_model``, ``tokenizer``, ``logit_scale``,
            ``encode_text`` and ``feature_norm`` exist).
    """

    is_clip: bool = False

    def __init__(
        self,
        name: str,
        net: nn.Module | None,
        feature_dim: int,
        weights_id: str,
        *,
        family: str,
        image_size: int,
        norm_mean,
        norm_std,
        interpolation: InterpolationMode,
        train_transform: Callable,
        eval_transform: Callable,
    ):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if not isinstance(interpolation, InterpolationMode):
            raise ValueError(f"interpolation must be a torchvision InterpolationMode, got {interpolation!r}")
        if net is not None:
            self.net = net
        self.name = name
        self.family = family
        self.feature_dim = int(feature_dim)
        self.weights_id = weights_id
        self.image_size = int(image_size)
        self.norm_mean = tuple(float(m) for m in norm_mean)
        self.norm_std = tuple(float(s) for s in norm_std)
        self.interpolation = interpolation
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    @property
    def features_id(self) -> str:
        """Names everything about the backbone that determines its features for a given input tensor:
        ``weights_id`` plus feature options (CLIP's ``feature_norm``). Use it in feature-cache keys."""
        return self.weights_id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, 3, H, W]`` to features ``[N, feature_dim]``."""
        check_images(images, self.name)
        return self.net(images).flatten(1)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, family={self.family!r}, feature_dim={self.feature_dim}, "
                f"weights_id={self.weights_id!r}")


def check_images(images: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``images`` is a tensor ``[N, 3, H, W]``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"backbone {name!r} expects a float tensor [N, 3, H, W]; got {shape}")


class Classifier(nn.Module):
    """``head(backbone(x))``: a backbone plus a linear head (with bias) over its features.

    The head always runs in fp32, also under autocast: the backbone's (possibly bf16) features are cast to
    float32 and multiplied by the fp32 head with autocast disabled, so fine-tuned models are scored from
    fp32 logits exactly like linear probes and zero-shot heads on cached features.

    Args:
        backbone: a :class:`Backbone`.
        num_classes: number of output logits.
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, int(num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[N, D]``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]``, float32."""
        feats = self.backbone(x)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return self.head(feats.float())


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` contains any BatchNorm layer (``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm``, and
    subclasses such as timm's ``BatchNormAct2d``), i.e. layers with running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def register_backbone(name: str, family: str):
    """Decorator: register a factory ``(*, weights, pretrained, image_size, augment) -> Backbone``.

    Args:
        name: registry name.
        family: the family of the backbones it builds (one of :data:`FAMILIES`); :func:`create_backbone`
            reads it to validate family-specific options before building anything.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def add(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        factory.family = family
        return BACKBONES.register(name, factory)

    return add


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: str | None = None,
    image_size: int | None = None,
    augment: bool = True,
    feature_norm: bool | None = None,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: registry name; see :func:`list_backbones`.
        weights: path to a local weights file (state dict, or a checkpoint with a ``state_dict`` entry) to
            load instead of downloading. Works for every backbone (the only source for
            ``mocotp_fmow_resnet50``).
        pretrained: which published weights to use; backbone-specific tag (CLIP: an open_clip tag, default
            ``"openai"``; ``resnet50``: a torchvision weights name, default ``"IMAGENET1K_V1"``;
            ``efficientnet_lite0``: ``"imagenet"``). ``"none"`` gives a random initialisation (seeded by
            the global torch RNG). Ignored when ``weights`` is given, except by CLIP, where the tag still
            chooses the activation (QuickGELU for ``"openai"``).
        image_size: input resolution of the transforms (and of CLIP ViTs, whose position embeddings are
            resized); default: the weights' native resolution.
        augment: if False, ``train_transform`` is the deterministic eval-style transform.
        feature_norm: CLIP only: L2-normalise the image embedding (True, as WiSE-FT) or return the raw
            projected embedding (False, as LP-FT's ``clip_model.py``); None keeps the default (True).

    Returns:
        A :class:`Backbone` on the CPU, in train mode.

    Raises:
        ValueError: unknown name or tag, bad ``image_size``, ``feature_norm`` on a non-CLIP backbone.
        WeightsNotFoundError: the weights are neither cached nor downloadable, or ``weights`` is not a file.
        WeightsMismatchError: the weights file does not fit the architecture.
    """
    factory = BACKBONES.get(name)
    if image_size is not None and (int(image_size) != image_size or image_size < 8):
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if feature_norm is not None:
        if not isinstance(feature_norm, bool):
            raise ValueError(f"feature_norm must be True, False or None, got {feature_norm!r}")
        if getattr(factory, "family", None) != "clip":
            raise ValueError(f"feature_norm is a CLIP option; backbone {name!r} is not a CLIP backbone "
                             f"(leave feature_norm=None)")
    if weights is not None and not Path(weights).is_file():
        raise WeightsNotFoundError(
            f"--weights file for backbone {name!r} not found: {weights} (expected a local state dict or "
            f"checkpoint file)"
        )
    backbone = factory(weights=weights, pretrained=pretrained, image_size=image_size, augment=augment)
    backbone.name = name
    if feature_norm is not None:
        backbone.feature_norm = feature_norm
    return backbone


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return BACKBONES.names()
