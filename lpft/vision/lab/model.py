"""The lab's network: a small ResNet with GroupNorm on the raw 8x8 digit values, and SimCLR's projection head.

:class:`LabResNet` (width 16, about 120k parameters): a 3x3 convolution to ``w`` channels and a residual block
at 8x8; a stride-2 convolution to ``2w`` and a residual block at 4x4; a stride-2 convolution to ``4w`` and a
residual block at 2x2; global average pooling to a ``4w``-dimensional feature. GroupNorm instead of BatchNorm
everywhere: the features are then a function of each image alone, in train and eval mode alike, so LP-FT's
"network in eval mode" and WiSE-FT's weight averaging have no running statistics to reconcile
(docs/lab.md, "Backbone").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["GROUPS", "LabResNet", "ProjectionHead", "values_to_inputs"]

#: GroupNorm groups in every layer
GROUPS = 8


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(GROUPS, channels), channels)


class _Block(nn.Module):
    """conv3x3-GN-ReLU-conv3x3-GN plus the identity, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + x)


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), _norm(c_out),
                         nn.ReLU(inplace=True), _Block(c_out))


class LabResNet(nn.Module):
    """Images ``[N, C, H, W]`` (C = 1, or 3 equal channels, averaged) -> features ``[N, 4 * width]``.

    Args:
        width: channels of the first stage (the feature dimension is ``4 * width``).
    """

    def __init__(self, width: int = 16):
        super().__init__()
        if int(width) != width or width < 2:
            raise ValueError(f"width must be an integer >= 2, got {width!r}")
        w = int(width)
        self.width = w
        self.feature_dim = 4 * w
        self.body = nn.Sequential(_stage(1, w, 1), _stage(w, 2 * w, 2), _stage(2 * w, 4 * w, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LabResNet expects images [N, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 3:  # digits are grey: the three channels are equal
            x = x.mean(dim=1, keepdim=True)
        return self.body(x)


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP ``dim -> hidden -> out`` (Chen et al. 2020, Sec. 2.1); dropped after pretraining."""

    def __init__(self, dim: int, hidden: int = 128, out: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def values_to_inputs(values: np.ndarray) -> torch.Tensor:
    """8x8 digit values 0-16 (``[N, 64]`` or ``[N, 8, 8]``) -> the float tensor ``[N, 1, 8, 8]`` the backbone sees.

    Exactly what the ``digits_simclr`` eval transform makes of a ``digits`` item (values scaled to 0-255 and
    rounded as in :func:`lpft.vision.data.digits_render.values_to_image`, then ``ToTensor``'s division by 255;
    its normalisation is the identity), so pretraining and fine-tuning see the same inputs.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim < 2 or v.shape[-1] * (v.shape[-2] if v.ndim == 3 else 1) != 64 or v.ndim > 3:
        raise ValueError(f"expected values [N, 64] or [N, 8, 8], got shape {v.shape}")
    g = np.clip(np.rint(v.reshape(-1, 64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return torch.from_numpy(g.astype(np.float32) / 255.0).reshape(-1, 1, 8, 8)
