"""Learning-rate schedules and optimisers of the two protocols (docs/protocols.md).

The learning rate is a pure function of the global step, so a resumed run replays the schedule exactly.
"""

from __future__ import annotations

import math

import torch

__all__ = ["learning_rate", "make_optimizer"]


def learning_rate(base_lr: float, *, schedule: str, step: int, epoch: int, steps_per_epoch: int, epochs: int,
                  warmup_steps: int = 0) -> float:
    """Learning rate at a global step.

    ``cosine_epoch`` (LP-FT): ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch, no warm-up.
    ``cosine_step`` (WiSE-FT): linear warm-up over ``warmup_steps`` then cosine to 0 over the remaining steps.
    ``constant``: ``base_lr``.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "cosine_epoch":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule == "cosine_step":
        total = max(epochs * steps_per_epoch, 1)
        if warmup_steps > 0 and step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        denom = max(total - warmup_steps, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / denom))
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine_epoch, cosine_step or constant")


def make_optimizer(params, *, optimizer: str, lr: float, momentum: float | None, weight_decay: float | None):
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay or 0.0)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0 if weight_decay is None else weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; expected 'sgd' or 'adamw'")
