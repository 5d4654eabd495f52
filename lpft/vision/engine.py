"""The training engine: seeded, resumable fine-tuning with per-epoch checkpoints and model selection.

One loop serves FT, LP-FT, the fine-tuning stage of WiSE-FT and FLYP; the differences are the config
(optimiser, schedule, learning rate, which epoch is kept), whether the network trains in eval mode
(LP-FT keeps the whole network in eval mode, so BatchNorm statistics stay frozen; docs/protocols.md) and the
loss (cross-entropy, or a ``criterion`` such as FLYP's contrastive loss).

Guarantees:

* **Determinism.** Every epoch re-seeds torch and the shuffling generator from ``(seed, epoch)``, and the
  learning rate is a pure function of the global step, so a run resumed from the checkpoint of epoch ``e``
  replays epochs ``e+1 ...`` exactly as an uninterrupted run would (on CPU).
* **The single-process answer under torchrun.** ``batch_size`` is the global batch; each rank takes its
  share of every global batch (:func:`lpft.vision.distributed.rank_micro_batches`), losses are scaled so
  that the averaged gradient is that of the mean loss over the global batch, BatchNorm statistics in train
  mode are synchronised, and evaluation is sharded and gathered. See :mod:`lpft.vision.distributed`.
* **Nothing is lost.** After every epoch ``last.pt`` (model, optimiser, history) is written atomically by
  rank 0, keeping the previous one as a fallback; the best epoch by ID validation accuracy is kept in
  ``best.pt`` (``select_epoch="best"``), or the last epoch is the result (``"last"``, WiSE-FT's theta_1).
* **Divergence is loud.** A non-finite loss stops the run with :class:`TrainingDiverged`.

Fine-tuning options (L2-SP, TPGM, freezing / surgical fine-tuning, SWA / EMA; ``docs/methods.md``) plug in as
:class:`TrainHook` objects; with no hook the loop is exactly the plain one.
"""

from __future__ import annotations

import copy
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from lpft.vision.progress import tqdm

from lpft.vision import distributed as D
from lpft.vision.bestckpt import load_best_state as _load_best
from lpft.vision.features import extract_features
from lpft.vision.interpolate import interpolate_state_dicts, recompute_batchnorm  # noqa: F401 (public API)
from lpft.vision.rundir import load_checkpoint, prev_checkpoint_path, save_checkpoint
from lpft.vision.schedule import learning_rate, make_optimizer  # noqa: F401 (public API)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class ResumeError(RuntimeError):
    """A run directory holds state that does not fit the request (e.g. checkpoints without --resume)."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (determinism settings: :func:`lpft.vision.distributed.configure`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def clone_module(m: nn.Module) -> nn.Module:
    return copy.deepcopy(m)


# --- evaluation -----------------------------------------------------------------------------------------
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device, num_workers: int = 0,
            progress: bool = True, desc: str = "eval", precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` (in eval mode) over ``dataset``, in dataset order; restores the mode.

    The same batched, no-grad, rank-sharded pass as feature extraction, with logits as the outputs.
    """
    return extract_features(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                            progress=progress, desc=desc, precision=precision)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, dataset: Any = None) -> float:
    """Top-1 accuracy after the dataset's logit projection (class masks, ObjectNet pooling)."""
    if dataset is not None and hasattr(dataset, "project_logits"):
        logits = dataset.project_logits(logits)
    if len(labels) == 0:
        raise ValueError("cannot compute accuracy on an empty split")
    return (logits.argmax(dim=1) == labels).float().mean().item()


# --- training -------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """What the loop needs from the run config (see :class:`lpft.vision.config.RunConfig`)."""

    lr: float
    epochs: int
    batch_size: int  # global batch
    optimizer: str = "sgd"
    momentum: float | None = 0.9
    weight_decay: float | None = 0.0
    schedule: str = "cosine_epoch"
    warmup_steps: int = 0
    grad_clip: float | None = None
    freeze_bn: bool = False
    seed: int = 0
    num_workers: int = 0
    eval_batch_size: int = 128
    grad_accum: int = 1
    precision: str = "fp32"
    select_epoch: str = "best"  # "best" ID-val epoch | "last" epoch


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]  # the selected epoch's state (best or last, per select_epoch)
    best_epoch: int
    best_val_acc: float
    history: list[dict[str, Any]] = field(default_factory=list)
    selected_checkpoint: str | None = None  # set when a hook's model is the result ("averaged.pt")


class TrainHook:
    """An option of fine-tuning plugged into :func:`train`; every method is a no-op by default.

    Hooks run in the order given, on every rank, always with the bare model (never the DDP wrapper). Their
    state (:meth:`state_dict`) is saved in ``last.pt`` under ``hooks[name]``, so a resumed run continues it.
    Implementations: :mod:`lpft.vision.surgical`, :mod:`lpft.vision.regularizers`, :mod:`lpft.vision.averaging`.
    """

    name = "hook"

    def setup(self, model: nn.Module) -> None:
        """Once, with the initial (pretrained) model on its device, before BatchNorm is synchronised, the optimizer
        and DDP are built and a checkpoint is loaded: freeze parameters (``requires_grad_(False)``), record
        ``w0``. Keep parameter and module *names*: under torchrun the BatchNorm layers are replaced after it."""

    def train_mode(self, model: nn.Module) -> None:
        """After the model is put in training mode at the start of each epoch."""

    def loss(self, model: nn.Module) -> torch.Tensor | None:
        """An fp32 scalar added to the loss once per optimizer step (after the mean cross-entropy)."""
        return None

    def after_step(self, model: nn.Module) -> None:
        """After every optimizer step (projections, moving averages)."""

    def end_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any] | None:
        """After epoch ``epoch`` (1-based) is trained, before it is evaluated; returns extra history fields."""
        return None

    def final_model(self, model: nn.Module) -> nn.Module | None:
        """A model that replaces the selected epoch as the run's result (weight averaging), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # augmentation / dropout draws differ per rank; rank 0 draws what a single process draws
    return seed * 1000 + epoch + 1_000_003 * rank


def _epoch_loader(train_set: Dataset, s: TrainSettings, epoch: int, device: torch.device):
    """This rank's micro-batches of one epoch, as ``(plan, loader)``; the loader yields them in plan order."""
    from lpft.vision.data.loader import ImageLoader, collate_images

    rank, world = D.rank_world()
    gen = torch.Generator().manual_seed(s.seed * 1000 + epoch)
    plan = D.rank_micro_batches(len(train_set), s.batch_size, generator=gen, rank=rank, world=world,
                                grad_accum=s.grad_accum)
    # a rank with no image in a (final, tiny) global batch still steps with every other rank: it runs one
    # image of that batch with loss weight 0
    batches = [idx if idx else [first] for _, micros, first in plan for idx in micros]
    loader = ImageLoader(train_set, batch_sampler=batches, num_workers=s.num_workers,
                         pin_memory=device.type == "cuda", collate_fn=collate_images)
    return plan, loader


def train(model: nn.Module, train_set: Dataset, val_set: Dataset, s: TrainSettings, *, device: torch.device,
          ckpt_dir: str | Path, resume: bool = False, progress: bool = True,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
          hooks: Sequence[TrainHook] = (), criterion: Callable[..., torch.Tensor] | None = None) -> TrainResult:
    """Fine-tune every trainable parameter of ``model`` with cross-entropy (or ``criterion``) and select an epoch.

    Args:
        model: a classifier (backbone + head) mapping images to logits.
        train_set / val_set: datasets of ``(image tensor, label)`` (``val_set`` may have ``project_logits``).
        s: optimisation settings (``s.batch_size`` is the global batch).
        device: this rank's device.
        ckpt_dir: directory of ``last.pt`` (every epoch) and ``best.pt`` (best ID-val epoch).
        resume: continue from ``ckpt_dir/last.pt`` (or its fallback); without it a checkpoint is an error.
        on_epoch_end: called on every rank with ``(epoch, history_row)`` after each epoch.
        hooks: fine-tuning options (:class:`TrainHook`), called in this order.
        criterion: replaces the cross-entropy of ``net(x)``: ``criterion(net, x, y, real=bool) -> loss`` summed
            over the micro-batch (the engine scales it like the cross-entropy), called inside the precision's
            autocast with ``net`` the module that trains (DDP-wrapped under torchrun) on every rank for every
            micro-batch; ``real=False`` marks a placeholder micro-batch of a rank that has no image of a final
            global batch (its loss is weighted 0, and it must add nothing to other ranks' losses). If it has
            ``set_epoch(epoch)`` (0-based), that is called at the start of every epoch, before its batches are
            drawn. ``val_set`` is still scored by ``model(x)`` logits. Used by FLYP (:mod:`lpft.vision.flyp`).
    Returns:
        the selected state dict (on CPU), its epoch (1-based; 0 = the initial model when ``epochs == 0``),
        its ID-val accuracy and the per-epoch history (train loss averaged over all ranks). A hook's
        :meth:`TrainHook.final_model` (an averaged model) replaces the selected epoch; it is saved in
        ``averaged.pt`` and its ID-val accuracy is added to the last history row (``averaged_val_acc``).
    """
    if s.select_epoch not in ("best", "last"):
        raise ValueError(f"select_epoch must be 'best' or 'last', got {s.select_epoch!r}")
    rank, world = D.rank_world()
    D.per_rank_batch(s.batch_size, world, s.grad_accum)  # the global batch must divide evenly
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    for h in hooks:  # before the BatchNorm conversion: a hook's copy of the model keeps plain BatchNorm
        h.setup(model)
    if world > 1 and not s.freeze_bn:
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        model = D.sync_batchnorm(model, device)
        for n, p in model.named_parameters():  # the conversion builds new parameters
            if n in frozen:
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameter: every parameter of the model is frozen")
    opt = make_optimizer(params, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best_state, best_epoch, best_val = None, 0, -1.0

    if last_path.exists() or prev_checkpoint_path(last_path).exists():
        if not resume:
            raise ResumeError(f"{last_path} exists: this run was started before. Pass --resume to continue it, "
                              f"or choose another --out / --run-id.")
        ck = load_checkpoint(last_path, fallback=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = int(ck["epoch"]), list(ck["history"])
        for h in hooks:
            h.load_state_dict(ck.get("hooks", {}).get(h.name, {}))
        best_epoch, best_val = int(ck["best_epoch"]), float(ck["best_val_acc"])
        if s.select_epoch == "best" and best_epoch == start_epoch:
            best_state = _cpu_state(model)
        elif s.select_epoch == "best" and best_epoch > 0:
            best_state = _load_best(best_path, best_epoch)
        if progress and rank == 0:
            tqdm.write(f"resuming from {last_path} after epoch {start_epoch}")

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def evaluate(m: nn.Module = model) -> float:
        logits, labels = predict(m, val_set, batch_size=s.eval_batch_size, device=device,
                                 num_workers=s.num_workers, progress=False, precision=s.precision)
        return accuracy(logits, labels, val_set)

    if not history:
        # Epoch 0 (the initial model) is logged; as in LP-FT's trainer it is not a selection candidate,
        # unless no epoch is trained at all (epochs == 0).
        acc0 = evaluate()
        history.append({"epoch": 0, "val_acc": acc0, "train_loss": None, "lr": None})
        if s.epochs == 0:
            best_val, best_epoch, best_state = acc0, 0, _cpu_state(model)

    check_every = 1 if device.type == "cpu" else 25  # a host sync per check
    for epoch in range(start_epoch, s.epochs):
        torch.manual_seed(_epoch_seed(s.seed, epoch, rank))
        if criterion is not None and hasattr(criterion, "set_epoch"):
            criterion.set_epoch(epoch)
        plan, loader = _epoch_loader(train_set, s, epoch, device)
        steps_per_epoch = len(plan)
        net.train(not s.freeze_bn)  # LP-FT: the whole network in eval mode (BatchNorm statistics frozen)
        for h in hooks:
            h.train_mode(model)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        extra_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        batches = iter(loader)
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{s.epochs}", disable=not progress or rank != 0, leave=False)
        lr = s.lr
        for i, (global_n, micros, _) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = learning_rate(s.lr, schedule=s.schedule, step=step, epoch=epoch, steps_per_epoch=steps_per_epoch,
                               epochs=s.epochs, warmup_steps=s.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            for k, idx in enumerate(micros):
                x, y = next(batches)
                x, y = D.to_device(x, device), torch.as_tensor(y).to(device)
                weight = float(world) / global_n if idx else 0.0
                sync = nullcontext() if (world == 1 or k == len(micros) - 1) else net.no_sync()
                with sync:
                    if criterion is None:
                        with D.autocast(device, s.precision):
                            logits = net(x)
                        ce = F.cross_entropy(logits.float(), y, reduction="sum")
                    else:
                        with D.autocast(device, s.precision):
                            ce = criterion(net, x, y, real=bool(idx)).float()
                    loss = ce * weight
                    if hooks and k == len(micros) - 1:  # once per step, inside the gradient all-reduce
                        extra = _extra_loss(hooks, model)
                        if extra is not None:
                            loss = loss + extra
                            extra_sum += extra.detach().double()
                    loss.backward()
                if idx:
                    loss_sum += ce.detach().double()
                    count += len(y)
            if (i + 1) % check_every == 0 or i + 1 == steps_per_epoch:
                _check_finite(loss_sum, epoch, i, lr, ckpt_dir)
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            for h in hooks:
                h.after_step(model)
        totals = D.all_reduce_sum([float(loss_sum), float(count)], device)
        extra_row: dict[str, Any] = {}
        for h in hooks:
            extra_row.update(h.end_epoch(model, epoch + 1) or {})
        val_acc = evaluate()
        row = {"epoch": epoch + 1, "val_acc": val_acc, "train_loss": float(totals[0] / max(float(totals[1]), 1.0)),
               "lr": lr}
        if float(extra_sum):  # the added loss terms, mean per step (the same on every rank)
            extra_row["extra_loss"] = float(extra_sum) / steps_per_epoch
        row.update(extra_row)
        history.append(row)
        if s.select_epoch == "last" or val_acc > best_val:
            best_val, best_epoch, best_state = val_acc, epoch + 1, _cpu_state(model)
            if rank == 0 and s.select_epoch == "best":
                save_checkpoint({"model": best_state, "epoch": best_epoch, "val_acc": best_val}, best_path)
        if rank == 0:
            ck = {"model": _cpu_state(model), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history,
                  "best_epoch": best_epoch, "best_val_acc": best_val}
            if hooks:
                ck["hooks"] = {h.name: h.state_dict() for h in hooks}
            save_checkpoint(ck, last_path)
        if progress and rank == 0:
            tqdm.write(f"epoch {epoch + 1}/{s.epochs}: train loss {row['train_loss']:.4f}, ID val acc {val_acc:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    if best_state is None:  # resumed after the last epoch
        best_state = _cpu_state(model) if s.select_epoch == "last" else _load_best(best_path, best_epoch)
    result = TrainResult(best_state=best_state, best_epoch=best_epoch, best_val_acc=best_val, history=history)
    for h in hooks:
        final = h.final_model(model)
        if final is not None:  # e.g. the SWA / EMA average: the run's result instead of the selected epoch
            result = _final_result(final, evaluate(final), history, ckpt_dir / "averaged.pt", h.name)
    return result


def _extra_loss(hooks: Sequence[TrainHook], model: nn.Module) -> torch.Tensor | None:
    terms = [t for t in (h.loss(model) for h in hooks) if t is not None]
    return torch.stack([t.float() for t in terms]).sum() if terms else None


def _final_result(final: nn.Module, val_acc: float, history: list[dict[str, Any]], path: Path,
                  source: str) -> TrainResult:
    """A hook's model as the run's result: saved to ``path`` (rank 0), its ID-val accuracy in the last row."""
    epoch = int(history[-1]["epoch"])
    history[-1]["averaged_val_acc"] = val_acc
    state = _cpu_state(final)
    if D.is_main():
        save_checkpoint({"model": state, "epoch": epoch, "val_acc": val_acc, "source": source}, path)
    return TrainResult(best_state=state, best_epoch=epoch, best_val_acc=val_acc, history=history,
                       selected_checkpoint=path.name)


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, lr: float, ckpt_dir: Path) -> None:
    total = float(D.all_reduce_sum([float(loss_sum)], loss_sum.device)[0])  # every rank stops together
    if not np.isfinite(total):
        raise TrainingDiverged(
            f"training loss became {total} by epoch {epoch + 1}, step {step} (lr={lr:.3g}); checkpoints up to "
            f"the previous epoch are in {ckpt_dir}. Try a smaller --lr.")
