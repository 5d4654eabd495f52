"""Weight averaging along the fine-tuning trajectory: SWA and EMA (``docs/methods.md``).

* **SWA** (Izmailov, Podoprikhin, Garipov, Vetrov, Wilson, UAI 2018, "Averaging weights leads to wider optima
  and better generalization"): the equal-weight mean of the weights at the end of epochs
  ``swa_start_epoch .. epochs``.
* **EMA**: an exponential moving average updated after every optimizer step,
  ``w_ema <- decay w_ema + (1 - decay) w`` (the first update copies ``w``).

Both keep a :class:`torch.optim.swa_utils.AveragedModel` of the parameters (``use_buffers=False``; EMA through
``get_ema_multi_avg_fn``). The averaged model is the run's result (:meth:`WeightAverage.final_model`).
BatchNorm statistics of an average are not an average of statistics: when BatchNorm trained in train mode,
they are re-estimated after averaging with :func:`lpft.vision.interpolate.recompute_batchnorm` on the ID-train
images with the eval transform. That function has ``torch.optim.swa_utils.update_bn``'s semantics (reset, then
a cumulative average over one pass in train mode) and is the one WiSE-FT's ``recomputed`` BatchNorm variant uses,
with the package's seeded, precision-aware loader and the same full pass on every rank (so every rank gets the
single-process statistics). When BatchNorm was frozen (LP-FT) the pretrained statistics are kept, and the
statistics of a BatchNorm layer whose parameters were frozen (``--freeze-embed``) are restored after the pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from lpft.vision.engine import TrainHook
from lpft.vision.modifiers import default_swa_start

__all__ = ["KINDS", "WeightAverage", "default_swa_start"]

KINDS = ("swa", "ema")


class WeightAverage(TrainHook):
    """SWA or EMA of the fine-tuned weights, as a :class:`~lpft.vision.engine.TrainHook`.

    Args:
        kind: ``"swa"`` or ``"ema"``.
        epochs: the run's epochs (for the default SWA start).
        swa_start_epoch: SWA averages the weights at the end of this epoch (1-based) and every later one
            (default :func:`default_swa_start`).
        ema_decay: EMA decay in [0, 1) (0: the average is the last weights).
        bn_set: images for re-estimating BatchNorm statistics after averaging; None keeps the statistics the
            model had (BatchNorm frozen, or no BatchNorm).
        batch_size / device / num_workers / precision / seed / progress: of the BatchNorm pass.
    """

    name = "average"

    def __init__(self, kind: str, *, epochs: int, swa_start_epoch: int | None = None, ema_decay: float = 0.999,
                 bn_set: Dataset | None = None, batch_size: int = 128, device: torch.device | None = None,
                 num_workers: int = 0, precision: str = "fp32", seed: int = 0, progress: bool = False):
        if kind not in KINDS:
            raise ValueError(f"weight averaging must be one of {', '.join(KINDS)}; got {kind!r}")
        start = default_swa_start(epochs) if swa_start_epoch is None else int(swa_start_epoch)
        if kind == "swa" and not 1 <= start <= max(epochs, 1):
            raise ValueError(f"--swa-start-epoch must lie in [1, epochs={epochs}], got {start}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {ema_decay}")
        self.kind, self.start, self.decay = kind, start, float(ema_decay)
        self.bn_set, self.batch_size, self.device = bn_set, batch_size, device
        self.num_workers, self.precision, self.seed, self.progress = num_workers, precision, seed, progress
        self.avg: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def n_averaged(self) -> int:
        return 0 if self.avg is None else int(self.avg.n_averaged)

    def setup(self, model: nn.Module) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        fn = get_ema_multi_avg_fn(self.decay) if self.kind == "ema" else None  # None: SWA's equal-weight mean
        self.avg = AveragedModel(model, multi_avg_fn=fn, use_buffers=False)

    def after_step(self, model: nn.Module) -> None:
        if self.kind == "ema":
            self.avg.update_parameters(model)

    def end_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any] | None:
        if self.kind == "swa" and epoch >= self.start:
            self.avg.update_parameters(model)
        return {"n_averaged": self.n_averaged}

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The averaged model's state as it stands (before any BatchNorm re-estimation), on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.avg.module.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "averaged": {k: v.detach().cpu() for k, v in self.avg.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("kind") != self.kind:
            raise ValueError(f"the checkpoint holds a {state.get('kind')!r} average, not {self.kind!r}")
        self.avg.load_state_dict(state["averaged"])

    def final_model(self, model: nn.Module) -> nn.Module | None:
        """The averaged model with BatchNorm statistics for it (None when nothing was averaged)."""
        if self.n_averaged == 0:
            return None
        m = self.avg.module
        bns = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        if self.bn_set is not None and bns:
            from lpft.vision.interpolate import recompute_batchnorm
            from lpft.vision.surgical import frozen_batchnorm

            modules = dict(m.named_modules())
            keep = {n: {k: v.clone() for k, v in modules[n].state_dict().items()} for n in frozen_batchnorm(m)}
            device = self.device or next(m.parameters()).device
            recompute_batchnorm(m, self.bn_set, batch_size=self.batch_size, device=device,
                                num_workers=self.num_workers, seed=self.seed, progress=self.progress,
                                precision=self.precision)
            for n, st in keep.items():  # a frozen layer keeps its pretrained statistics
                modules[n].load_state_dict(st)
        return m
