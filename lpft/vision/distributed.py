"""What each process does: device, precision, rank / world, reductions, gathers, and who writes files.

One run is either a single process or ``torchrun --nproc_per_node=N`` ranks (``WORLD_SIZE > 1``). The
contract, which the engine, feature extraction and the methods all follow through this module:

* **Device.** :func:`resolve_device` turns ``--device`` into a ``torch.device``; under torchrun on CUDA each
  rank takes ``cuda:LOCAL_RANK`` (:func:`init_from_env`).
* **Precision.** ``fp32`` (the papers; TF32 matmuls allowed on GPU) or ``bf16`` autocast (opt-in).
  Classifier heads and logits are always fp32 (:class:`lpft.vision.backbones.Classifier`).
* **Determinism.** CPU runs use deterministic algorithms; GPU runs let cuDNN autotune (:func:`configure`).
* **Batches.** ``batch_size`` is the global batch. Every rank builds the same permutation of the training
  set (seeded by seed and epoch), cuts it into global batches exactly as one process would, and takes its
  share of each (:func:`rank_micro_batches`); gradients are averaged so that one optimizer step sees the
  mean loss over the whole global batch. With BatchNorm in train mode the statistics are synchronised over
  the global batch (:func:`sync_batchnorm`).
* **Evaluation.** Every rank evaluates a strided shard of a split and the shards are gathered back into
  dataset order (:func:`shard_indices`, :func:`gather_in_order`), giving the single-process outputs.
* **Files.** Only rank 0 writes (:func:`is_main`); every write is atomic (:mod:`lpft.vision.io`).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["resolve_device", "init_from_env", "rank_world", "is_main", "barrier", "configure", "autocast",
           "to_device", "all_reduce_sum", "broadcast_flag_all", "shard_indices", "gather_in_order",
           "per_rank_batch", "rank_micro_batches", "sync_batchnorm", "PRECISIONS"]

logger = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a user device spec (``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) into a device.

    Raises:
        ValueError: an invalid string, or CUDA requested when it is unavailable.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"invalid device {device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or "
                             f"another torch device string ({exc})") from None
    else:
        raise ValueError(f"device must be a string, torch.device or None, got {type(device).__name__}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and prints results (rank 0)."""
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        # a scheduler may show each task only its own GPU (CUDA_VISIBLE_DEVICES with one entry)
        local = int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def configure(device: torch.device) -> None:
    """Deterministic algorithms on CPU; cuDNN autotuning and TF32 matmuls on GPU (the papers ran fp32,
    where TF32 is the default on Ampere+ in their PyTorch versions)."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(False)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, precision: str = "fp32"):
    """The autocast context for ``precision``: nothing for fp32, bf16 autocast for ``"bf16"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an input batch (channels-last for image batches on CUDA)."""
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# --- reductions and gathers ------------------------------------------------------------------------------
def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Sum a vector of numbers over all ranks (float64; returned on CPU). Identity in one process."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if rank_world()[1] > 1:
        backend_dev = device if device is not None and device.type == "cuda" else torch.device("cpu")
        t = t.to(backend_dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def broadcast_flag_all(flag: bool) -> bool:
    """True iff ``flag`` is true on every rank (e.g. "every rank found the cache entry")."""
    if rank_world()[1] == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def shard_indices(n: int, rank: int | None = None, world: int | None = None) -> list[int]:
    """This rank's strided shard ``rank, rank + world, ...`` of ``range(n)``."""
    r, w = rank_world()
    r = r if rank is None else rank
    w = w if world is None else world
    return list(range(r, n, w))


def gather_in_order(local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble strided shards (see :func:`shard_indices`) of a length-``n`` result into dataset order.

    ``local`` holds this rank's rows ``[len(shard), ...]``; every rank gets the full ``[n, ...]`` tensor.
    """
    rank, world = rank_world()
    if world == 1:
        return local
    sizes = [len(range(r, n, world)) for r in range(world)]
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, expected {sizes[rank]} of {n}")
    backend_cuda = dist.get_backend() == "nccl"
    buf = local.cuda() if backend_cuda else local.cpu()
    pad = max(sizes) - buf.shape[0]
    if pad:
        buf = torch.cat([buf, buf.new_zeros((pad, *buf.shape[1:]))])
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf.contiguous())
    out = local.new_empty((n, *local.shape[1:]))
    for r in range(world):
        out[r::world] = parts[r][: sizes[r]].to(out.device)
    return out


# --- batches -----------------------------------------------------------------------------------------------
def per_rank_batch(global_batch: int, world: int, grad_accum: int = 1) -> int:
    """Images per rank per micro-step; the global batch must divide evenly over ranks and accumulation steps."""
    parts = world * grad_accum
    if global_batch % parts:
        raise ValueError(
            f"the global batch size {global_batch} must be divisible by world_size x grad_accum = {world} x "
            f"{grad_accum} = {parts}; choose --batch-size, the number of processes or --grad-accum accordingly")
    return global_batch // parts


def rank_micro_batches(n: int, global_batch: int, *, generator: torch.Generator, rank: int, world: int,
                       grad_accum: int = 1, shuffle: bool = True) -> list[tuple[int, list[list[int]], int]]:
    """This rank's share of one epoch: ``[(global_batch_size, [micro_batch_indices] * grad_accum, first), ...]``
    where ``first`` is the first index of the global batch.

    The permutation (from ``generator``) and the cut into global batches are those of a single process; each
    global batch is split into ``world * grad_accum`` near-equal chunks, and rank ``r`` takes chunks
    ``r, world + r, ...`` as its micro-batches. A chunk can be empty only when a final global batch holds
    fewer images than ``world * grad_accum``.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    out = []
    for start in range(0, n, global_batch):
        batch = order[start:start + global_batch]
        chunks = torch.tensor_split(batch, world * grad_accum)
        out.append((len(batch), [chunks[k * world + rank].tolist() for k in range(grad_accum)], int(batch[0])))
    return out


# --- BatchNorm over the global batch ------------------------------------------------------------------------
class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose train-mode statistics are the moments of the global batch, all-reduced with autograd
    over the CPU (gloo) process group; ``torch.nn.SyncBatchNorm`` accepts only GPU modules. Eval mode is a
    plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or rank_world()[1] == 1:
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce  # differentiable (gradients all-reduced too)

        dims = [d for d in range(x.dim()) if d != 1]
        # moments in float64: E[x^2] - E[x]^2 in float32 cancels badly when |mean| >> std
        xd = x.double()
        count = torch.tensor([x.numel() / max(x.shape[1], 1)], dtype=torch.float64, device=x.device)
        with warnings.catch_warnings():  # its deprecation points to a functional API without autograd
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        c = x.shape[1]
        total = stats[-1]
        mean, sq = stats[:c] / total, stats[c:2 * c] / total
        var = (sq - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(x.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(x.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        mean, inv_std = mean.to(x.dtype), torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.view(shape)) * inv_std.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class _GlobalBatchNormAct(_GlobalBatchNorm):
    """:class:`_GlobalBatchNorm` followed by the dropout and activation that timm's ``BatchNormAct2d`` fuses
    into its BatchNorm (same state-dict keys: ``drop`` and ``act`` hold no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch under DDP: ``torch.nn.SyncBatchNorm`` (timm's converter,
    which keeps fused activations, when available) on GPU; on CPU, plain ``BatchNorm1d/2d/3d`` and timm's
    ``BatchNormAct2d`` become a gloo all-reduce BatchNorm (other BatchNorm subclasses stay per-rank there, with a
    warning)."""
    if rank_world()[1] == 1:
        return model
    if device.type == "cuda":
        try:
            from timm.layers import convert_sync_batchnorm
        except ImportError:  # pragma: no cover - timm is a dependency
            convert_sync_batchnorm = nn.SyncBatchNorm.convert_sync_batchnorm
        return convert_sync_batchnorm(model)
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    others = []

    def fused(module: nn.Module) -> bool:  # timm's BatchNormAct2d: BatchNorm, then drop, then act
        return isinstance(getattr(module, "act", None), nn.Module) and isinstance(getattr(module, "drop", None),
                                                                                  nn.Module)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) in plain or (isinstance(module, nn.modules.batchnorm._BatchNorm) and fused(module)):
            cls = _GlobalBatchNormAct if type(module) not in plain else _GlobalBatchNorm
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if cls is _GlobalBatchNormAct:
                new.drop, new.act = module.drop, module.act
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            others.append(type(module).__name__)
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    model = convert(model)
    if others:
        logger.warning("BatchNorm layers of type(s) %s keep per-rank statistics on CPU", sorted(set(others)))
    return model
