"""Per-epoch TensorBoard logging of fine-tuning (train loss, learning rate, ID-val accuracy).

Event files go to ``<run_dir>/tensorboard`` through ``torch.utils.tensorboard`` when the ``tensorboard``
package is installed (``pip install 'lpft[tensorboard]'``); without it logging is a no-op and nothing else
changes. Only rank 0 logs (the caller passes ``None`` on other ranks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["EpochLogger", "tensorboard_available"]

logger = logging.getLogger(__name__)


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        return False
    return True


class EpochLogger:
    """``on_epoch_end`` callback of :func:`lpft.vision.engine.train` writing scalars per epoch.

    Args:
        log_dir: where the event files go; ``None`` disables logging (non-main ranks).
    """

    def __init__(self, log_dir: str | Path | None):
        self.writer = None
        if log_dir is not None and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))
        elif log_dir is not None:
            logger.info("tensorboard is not installed; no event files are written")

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, key in (("train/loss", "train_loss"), ("train/lr", "lr"), ("val/id_acc", "val_acc")):
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "EpochLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
