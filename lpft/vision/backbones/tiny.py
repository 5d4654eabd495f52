"""Small random-init backbones for tests and smoke runs: ``tiny_cnn`` (with BatchNorm) and ``tiny_clip``."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.base import Backbone, register_backbone
from lpft.vision.backbones.clip import build_clip
from lpft.vision.backbones.transforms import make_transforms
from lpft.vision.backbones.weights import file_id, is_random_tag, load_file, load_strict, random_id, strip_prefix

__all__ = ["TINY_CLIP_ARCH", "TinyCNN"]

# The open_clip architecture behind tiny_clip. No "quick_gelu" key: the activation is chosen at build time
# (QuickGELU, like OpenAI's CLIP).
TINY_CLIP_ARCH = "lpft-tiny-clip"
_TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
_tiny_registered = False


class TinyCNN(nn.Module):
    """conv(3->8)-BN-ReLU, conv(8->16, stride 2)-BN-ReLU, global average pool: 16-d features."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _check_no_tag(name: str, pretrained) -> None:
    if pretrained is not None and not is_random_tag(pretrained):
        raise ValueError(f"{name} has no published weights; pretrained must be None or 'none', got {pretrained!r}")


@register_backbone("tiny_cnn", "tiny")
def _tiny_cnn(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """A 2-layer CNN with BatchNorm (16-d features), random init from the global torch RNG; 32 px inputs."""
    _check_no_tag("tiny_cnn", pretrained)
    seed = torch.initial_seed()
    net = TinyCNN()
    if weights is not None:
        load_strict(net, strip_prefix(load_file(weights), "module."), f"file {weights}")
        weights_id = file_id(weights)
    else:
        weights_id = random_id(net, seed)
    size = 32 if image_size is None else int(image_size)
    mean = std = (0.5, 0.5, 0.5)
    interpolation = InterpolationMode.BILINEAR
    train_tf, eval_tf = make_transforms(
        size, mean=mean, std=std, interpolation=interpolation, resize=size, train_scale=(0.8, 1.0),
        flip=False, augment=augment,
    )
    return Backbone("tiny_cnn", net, 16, weights_id, family="tiny", image_size=size, norm_mean=mean,
                    norm_std=std, interpolation=interpolation, train_transform=train_tf, eval_transform=eval_tf)


def register_tiny_clip() -> None:
    """Write the tiny architecture's JSON config to a temp dir and register it with open_clip (once)."""
    global _tiny_registered
    import open_clip

    if _tiny_registered or TINY_CLIP_ARCH in open_clip.list_models():
        _tiny_registered = True
        return
    from lpft.vision.io import write_text_atomic

    cfg_dir = Path(tempfile.mkdtemp(prefix="lpft-open-clip-cfg-"))
    # open_clip re-reads every config path whenever a config is added, so the file must outlive this call.
    atexit.register(shutil.rmtree, cfg_dir, ignore_errors=True)
    write_text_atomic(cfg_dir / f"{TINY_CLIP_ARCH}.json", json.dumps(_TINY_CLIP_CFG, indent=2))
    open_clip.add_model_config(cfg_dir / f"{TINY_CLIP_ARCH}.json")
    _tiny_registered = True


@register_backbone("tiny_clip", "clip")
def _tiny_clip(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """A ~1.8M-parameter open_clip ViT (32 px, 32-d embeddings), random init, for tests and smoke runs;
    family ``"clip"`` (it stands in for the CLIP backbones)."""
    _check_no_tag("tiny_clip", pretrained)
    register_tiny_clip()
    return build_clip("tiny_clip", TINY_CLIP_ARCH, weights=weights, pretrained="none",
                      image_size=image_size, augment=augment)
