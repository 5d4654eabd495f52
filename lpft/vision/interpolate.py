"""WiSE-FT weight interpolation and BatchNorm re-estimation of interpolated networks.

Wortsman et al. 2022, Eq. 1: ``theta_alpha = (1 - alpha) * theta_0 + alpha * theta_1``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from lpft.vision.progress import tqdm

from lpft.vision.distributed import autocast, to_device

__all__ = ["interpolate_state_dicts", "recompute_batchnorm"]


def interpolate_state_dicts(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT weight-space ensemble ``(1 - alpha) * theta0 + alpha * theta1`` (Wortsman et al. 2022, Eq. 1).

    Every floating-point entry is interpolated (head and BatchNorm running statistics included); integer
    buffers (``num_batches_tracked``) are taken from the nearer endpoint. ``alpha = 0`` and ``alpha = 1``
    return exact copies of the endpoints.
    """
    if set(theta0) != set(theta1):
        only0, only1 = sorted(set(theta0) - set(theta1)), sorted(set(theta1) - set(theta0))
        raise ValueError(f"state dicts differ in keys: only in theta_0 {only0[:5]}, only in theta_1 {only1[:5]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = {}
    for k, a in theta0.items():
        b = theta1[k]
        if a.shape != b.shape:
            raise ValueError(f"state dict entry {k!r} has shape {tuple(a.shape)} in theta_0, {tuple(b.shape)} in theta_1")
        if alpha == 0.0:
            out[k] = a.clone()
        elif alpha == 1.0:
            out[k] = b.clone()
        elif a.is_floating_point():
            out[k] = (1.0 - alpha) * a + alpha * b
        else:
            out[k] = (a if alpha < 0.5 else b).clone()
    return out


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device,
                        num_workers: int = 0, max_batches: int | None = None, seed: int = 0,
                        progress: bool = False, precision: str = "fp32") -> int:
    """Re-estimate every BatchNorm's running statistics on ``dataset`` (cumulative average, no gradients).

    Interpolating two BatchNorm networks also interpolates their running statistics, which need not match
    the interpolated network's activations; re-estimating them on ID training images is the standard fix.
    Returns the number of BatchNorm layers reset (0: nothing to do).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = {m: m.momentum for m in bns}
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches seen
    model.eval()
    for m in bns:
        m.train()
    from lpft.vision.data.loader import make_loader

    # Under torchrun every rank makes the same pass over all of ``dataset`` (no sampler), so every rank ends
    # with the statistics a single process would compute.
    loader = make_loader(dataset, batch_size, True, num_workers, device, seed=seed)
    try:
        for i, (x, _) in enumerate(tqdm(loader, desc="BN stats", disable=not progress, leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            with autocast(device, precision):
                model(to_device(x, device))
    finally:
        for m in bns:
            m.momentum = saved[m]
        model.train(was_training)
    return len(bns)
