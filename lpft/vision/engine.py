"""The training engine: seeded, resumable fine-tuning with per-epoch checkpoints and model selection.

One loop serves FT, LP-FT and the fine-tuning stage of WiSE-FT; the differences are the config
(optimiser, schedule, learning rate) and whether the network trains in eval mode (LP-FT freezes the
BatchNorm statistics by keeping the whole network in eval mode, Kumar et al. 2022, App. / PROTOCOL-LPFT
4.4).

Guarantees:

* **Determinism.** Every epoch re-seeds torch (``seed * 1000 + epoch``) and its shuffling generator, and
  the learning rate is a pure function of the global step, so a run resumed from the checkpoint of epoch
  ``e`` replays epochs ``e+1 ...`` exactly as an uninterrupted run would (on CPU).
* **Nothing is lost.** After every epoch ``last.pt`` (model, optimiser, history) is written atomically;
  the best epoch by ID validation accuracy is kept in ``best.pt``.
* **Divergence is loud.** A non-finite loss stops the run with :class:`TrainingDiverged`, naming the
  epoch, step and learning rate.
* **GPU.** On CUDA: bf16 autocast and channels-last; under ``torchrun`` (``WORLD_SIZE > 1``) the model is
  wrapped in DistributedDataParallel with a DistributedSampler and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import math
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lpft.vision.io import torch_save_atomic


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class ResumeError(RuntimeError):
    """A run directory holds state that does not fit the request (e.g. checkpoints without --resume)."""


# --- seeding / devices / distributed ---------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; on CPU also ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


def dist_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group (``(0, 1)`` when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return device
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def is_main_process() -> bool:
    return dist_world()[0] == 0


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere (CPU runs stay in fp32 and deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, device: torch.device, num_workers: int = 0,
                seed: int | None = None, drop_last: bool = False) -> DataLoader:
    """The benchmark loader of :func:`lpft.vision.data.loader.make_loader` (decoding in workers, pinned
    memory on CUDA, corrupt-image skipping), seeded; under DDP each rank reads its shard of the data
    through a :class:`~torch.utils.data.distributed.DistributedSampler`."""
    from lpft.vision.data.loader import ImageLoader, collate_images
    from lpft.vision.data.loader import make_loader as data_loader

    rank, world = dist_world()
    if world > 1 and shuffle:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed or 0, drop_last=drop_last)
        return ImageLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                           pin_memory=device.type == "cuda", collate_fn=collate_images,
                           persistent_workers=num_workers > 0, drop_last=drop_last)
    return data_loader(dataset, batch_size, shuffle, num_workers, device, seed=seed, drop_last=drop_last)


# --- evaluation -----------------------------------------------------------------------------------------
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device, num_workers: int = 0,
            progress: bool = True, desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` (in eval mode) over ``dataset``; restores the model's mode after.

    The same batched, no-grad pass as feature extraction (:func:`lpft.vision.features.extract_features`),
    with the model's outputs being logits and no cache.
    """
    from lpft.vision.features import extract_features

    return extract_features(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                            progress=progress, desc=desc)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, dataset: Any = None) -> float:
    """Top-1 accuracy after the dataset's logit projection (class masks, ObjectNet pooling)."""
    if dataset is not None and hasattr(dataset, "project_logits"):
        logits = dataset.project_logits(logits)
    if len(labels) == 0:
        raise ValueError("cannot compute accuracy on an empty split")
    return (logits.argmax(dim=1) == labels).float().mean().item()


# --- schedule -------------------------------------------------------------------------------------------
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


# --- training -------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """What the loop needs from the run config (see :class:`lpft.vision.config.RunConfig`)."""

    lr: float
    epochs: int
    batch_size: int
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


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(model: nn.Module, train_set: Dataset, val_set: Dataset, s: TrainSettings, *, device: torch.device,
          ckpt_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Fine-tune ``model`` (all parameters) with cross-entropy; select the epoch by ID validation accuracy.

    Args:
        model: a classifier (backbone + head) mapping images to logits.
        train_set / val_set: datasets of ``(image tensor, label)`` (``val_set`` has ``project_logits``).
        s: optimisation settings.
        device: where to train.
        ckpt_dir: directory of ``last.pt`` (every epoch) and ``best.pt`` (best ID-val epoch).
        resume: continue from ``ckpt_dir/last.pt``; without it an existing checkpoint is an error.
    Returns:
        the best state dict (on CPU), its epoch (1-based; 0 = the initial model when ``epochs == 0``), its
        ID-val accuracy and the per-epoch history.
    """
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    history: list[dict[str, Any]] = []
    rank, world = dist_world()
    start_epoch = 0
    best_state, best_epoch, best_val = None, 0, -1.0

    if last_path.exists():
        if not resume:
            raise ResumeError(
                f"{last_path} exists: this run was started before. Pass --resume to continue it, or choose "
                f"another --out / --run-id."
            )
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = ck["epoch"], ck["history"]
        best_epoch, best_val = ck["best_epoch"], ck["best_val_acc"]
        if best_path.exists():
            best_state = torch.load(best_path, map_location="cpu", weights_only=False)["model"]
        if progress:
            tqdm.write(f"resuming from {last_path} after epoch {start_epoch}")

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if not history:
        # Epoch 0 (the initial model) is logged; as in LP-FT's trainer it is not a selection candidate,
        # unless no epoch is trained at all (epochs == 0).
        logits, labels = predict(model, val_set, batch_size=s.eval_batch_size, device=device,
                                 num_workers=s.num_workers, progress=False)
        acc0 = accuracy(logits, labels, val_set)
        history.append({"epoch": 0, "val_acc": acc0, "train_loss": None, "lr": None})
        if s.epochs == 0:
            best_val, best_epoch, best_state = acc0, 0, _cpu_state(model)
            if rank == 0:
                torch_save_atomic({"model": best_state, "epoch": 0, "val_acc": acc0}, best_path)

    steps_per_epoch = None
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, s.epochs):
        torch.manual_seed(s.seed * 1000 + epoch)  # augmentation / dropout draws of this epoch
        loader = make_loader(train_set, s.batch_size, shuffle=True, device=device, num_workers=s.num_workers,
                             seed=s.seed * 1000 + epoch)
        if world > 1 and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        steps_per_epoch = len(loader)
        net.train(not s.freeze_bn)  # LP-FT: the whole network in eval mode (BatchNorm statistics frozen)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{s.epochs}", disable=not progress or rank != 0, leave=False)
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = learning_rate(s.lr, schedule=s.schedule, step=step, epoch=epoch, steps_per_epoch=steps_per_epoch,
                               epochs=s.epochs, warmup_steps=s.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = to_device(x, device), torch.as_tensor(y).to(device)
            with autocast_for(device):
                loss = loss_fn(net(x).float(), y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training loss became {loss.item()} at epoch {epoch + 1}, step {i} (lr={lr:.3g}); "
                    f"checkpoints up to the previous epoch are in {ckpt_dir}. Try a smaller --lr."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{lr:.2g}")
        logits, labels = predict(model, val_set, batch_size=s.eval_batch_size, device=device,
                                 num_workers=s.num_workers, progress=False)
        val_acc = accuracy(logits, labels, val_set)
        row = {"epoch": epoch + 1, "val_acc": val_acc, "train_loss": total / max(count, 1), "lr": lr}
        history.append(row)
        if val_acc > best_val:
            best_val, best_epoch, best_state = val_acc, epoch + 1, _cpu_state(model)
            if rank == 0:
                torch_save_atomic({"model": best_state, "epoch": best_epoch, "val_acc": best_val}, best_path)
        if rank == 0:
            torch_save_atomic({"model": _cpu_state(model), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                               "history": history, "best_epoch": best_epoch, "best_val_acc": best_val}, last_path)
        if progress and rank == 0:
            tqdm.write(f"epoch {epoch + 1}/{s.epochs}: train loss {row['train_loss']:.4f}, ID val acc {val_acc:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return TrainResult(best_state=best_state, best_epoch=best_epoch, best_val_acc=best_val, history=history)


# --- WiSE-FT --------------------------------------------------------------------------------------------
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
                        progress: bool = False) -> int:
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
    loader = make_loader(dataset, batch_size, shuffle=True, device=device, num_workers=num_workers, seed=seed)
    try:
        for i, (x, _) in enumerate(tqdm(loader, desc="BN stats", disable=not progress, leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            with autocast_for(device):
                model(to_device(x, device))
    finally:
        for m in bns:
            m.momentum = saved[m]
        model.train(was_training)
    return len(bns)


def clone_module(m: nn.Module) -> nn.Module:
    return copy.deepcopy(m)
