"""SimCLR's two views of a digit: per-image random geometry, ink, blur, noise and erasing on 8x8 tensors.

Every image of a batch draws its own parameters from one ``torch.Generator``, so a pretraining run is a
function of its seed. The operations are torchvision's ideas at the scale of 8x8 values: ``RandomAffine``
(rotation, scale, shear, translation), ``ColorJitter``'s brightness as an ink gain plus a gamma change (a
stand-in for stroke thickness), ``GaussianBlur``, additive noise and ``RandomErasing``. They are written here as
batched tensor operations because torchvision's transforms draw one parameter set per call: per-image calls
cost about 9 ms per 8x8 image on this project's 2-core machine (4.7 s per 512-view step, 200x the rest of the
step). Geometry uses ``torch.nn.functional.affine_grid`` / ``grid_sample`` with bilinear interpolation and
zero fill. Nothing here is applied in LP or fine-tuning (docs/lab.md, "Pretraining").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentations (each drawn uniformly per image)."""

    rotation_deg: float = 15.0  #: rotation in [-r, r] degrees
    scale: float = 0.15  #: zoom factor in [1 - s, 1 + s]
    shear: float = 0.2  #: horizontal shear factor in [-s, s]
    shift_px: float = 1.0  #: translation in [-t, t] pixels along each axis
    gain: tuple[float, float] = (0.7, 1.3)  #: ink multiplied by a factor in this range
    log_gamma: float = 0.4  #: values raised to exp(u), u in [-g, g] (< 1 thickens strokes)
    blur_p: float = 0.3  #: probability of a 3x3 binomial blur
    noise_std: float = 0.08  #: Gaussian noise with a std drawn from [0, noise_std]
    erase_p: float = 0.3  #: probability of zeroing a random erase_px x erase_px square
    erase_px: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gain"] = list(self.gain)
        return d


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _affine(x: torch.Tensor, c: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    rot = _uniform(n, -c.rotation_deg, c.rotation_deg, g) * (math.pi / 180.0)
    zoom = _uniform(n, 1.0 - c.scale, 1.0 + c.scale, g)
    shear = _uniform(n, -c.shear, c.shear, g)
    shift = _uniform(2 * n, -c.shift_px, c.shift_px, g).reshape(n, 2)
    cos, sin = torch.cos(rot), torch.sin(rot)
    # forward map (output = A @ input + t) in normalised coordinates: rotation @ shear @ zoom
    a = torch.stack([torch.stack([cos, cos * shear - sin], -1), torch.stack([sin, sin * shear + cos], -1)], -2)
    a = a * zoom[:, None, None]
    t = shift * torch.tensor([2.0 / w, 2.0 / h])
    # affine_grid wants the inverse: where in the input each output pixel comes from
    inv = torch.linalg.inv(a)
    theta = torch.cat([inv, -(inv @ t[:, :, None])], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view of every image.

    Args:
        x: ``[N, 1, H, W]`` float images with values in [0, 1] (:func:`lpft.vision.lab.model.values_to_inputs`).
        cfg: the augmentation ranges.
        generator: the source of every random draw (a CPU ``torch.Generator``).

    Returns:
        ``[N, 1, H, W]`` float tensor, values clipped to ``[0, gain_max]``.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"augment expects images [N, 1, H, W], got {tuple(x.shape)}")
    n = x.shape[0]
    g = generator
    x = _affine(x, cfg, g).clamp(0.0, 1.0)
    gamma = torch.exp(_uniform(n, -cfg.log_gamma, cfg.log_gamma, g))[:, None, None, None]
    x = x.pow(gamma) * _uniform(n, *cfg.gain, g)[:, None, None, None]
    k1 = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    kernel = (k1[:, None] * k1[None, :]).reshape(1, 1, 3, 3)
    blurred = F.conv2d(x, kernel, padding=1)
    x = torch.where((torch.rand(n, generator=g) < cfg.blur_p)[:, None, None, None], blurred, x)
    x = x + torch.randn(x.shape, generator=g) * _uniform(n, 0.0, cfg.noise_std, g)[:, None, None, None]
    e = int(cfg.erase_px)
    if e > 0:
        h, w = x.shape[-2:]
        ys = torch.randint(0, h - e + 1, (n,), generator=g)
        xs = torch.randint(0, w - e + 1, (n,), generator=g)
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        box = ((rows >= ys[:, None, None]) & (rows < ys[:, None, None] + e)
               & (cols >= xs[:, None, None]) & (cols < xs[:, None, None] + e))
        on = (torch.rand(n, generator=g) < cfg.erase_p)[:, None, None]
        x = x.masked_fill((box & on)[:, None], 0.0)
    return x.clamp(0.0, cfg.gain[1])
