"""The best epoch's checkpoint of a resumed run (used by :func:`lpft.vision.engine.train`)."""

from __future__ import annotations

from pathlib import Path

import torch

from lpft.vision.rundir import CorruptCheckpointError, load_checkpoint, prev_checkpoint_path

__all__ = ["load_best_state"]


def load_best_state(best_path: Path, best_epoch: int) -> dict[str, torch.Tensor]:
    """The state dict of the best epoch: ``best.pt``, or its previous version when a crash left ``best.pt`` one
    epoch ahead of the ``last.pt`` the run resumes from.

    Args:
        best_path: the run's ``ckpt/best.pt``.
        best_epoch: the epoch ``last.pt`` names as the best one (1-based).

    Raises:
        CorruptCheckpointError: neither file holds that epoch (the message says how to restart).
    """
    for path in (best_path, prev_checkpoint_path(best_path)):
        if path.exists():
            try:
                ck = load_checkpoint(path, fallback=False)
            except CorruptCheckpointError:
                continue
            if int(ck["epoch"]) == best_epoch:
                return ck["model"]
    raise CorruptCheckpointError(f"no checkpoint of the best epoch {best_epoch} in {best_path} or its previous "
                                 f"version; remove {best_path.parent} to restart the run")
