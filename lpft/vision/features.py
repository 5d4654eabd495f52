"""Frozen-backbone feature extraction with an optional on-disk cache.

Linear probing in LP-FT (Kumar et al., 2022, Sec. 4 and the official ``extract_features.py``) extracts
penultimate features once, with the network in ``eval()`` mode so that BatchNorm uses its running
statistics and does not update them, then fits a logistic regression on the cached features. This module
does the extraction step: no gradients, eval mode (the previous train/eval mode is restored afterwards),
batched through a ``DataLoader``, channels_last on CUDA, in the run's precision (fp32, or bf16 autocast). Under
``torchrun`` every rank extracts a strided shard and the shards are gathered back into dataset order, so every
rank returns exactly the single-process result.

Because extraction is the expensive part of an LP sweep (the C path is cheap), results can be cached under
``cache_dir/<sha256 of the canonical JSON of cache_key>.pt``. The key must name everything that changes the
features (backbone name, weights id, benchmark, split, transform repr, seed of the augmentation draw, ...);
it is stored next to the tensors and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset
from lpft.vision.progress import tqdm

from lpft.vision.data.loader import make_loader
from lpft.vision.distributed import (autocast, broadcast_flag_all, gather_in_order, rank_world, resolve_device,
                                     shard_indices, to_device)
from lpft.vision.io import torch_save_atomic

__all__ = ["extract_features", "resolve_device", "cache_path"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 2


def _canonical_key(cache_key: Mapping[str, Any]) -> str:
    if not isinstance(cache_key, Mapping) or not cache_key:
        raise ValueError(f"cache_key must be a non-empty dict, got {cache_key!r}")
    try:
        return json.dumps(dict(cache_key), sort_keys=True, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cache_key must be JSON-serialisable: {exc}") from None


def _json_default(o: Any):
    # only values with one obvious canonical form: paths, numpy/torch scalars and arrays
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} has no canonical JSON form")


def cache_path(cache_dir: str | Path, cache_key: Mapping[str, Any]) -> Path:
    """Path of the cache file for ``cache_key``: ``cache_dir/<sha256 of canonical JSON>.pt``."""
    digest = hashlib.sha256(_canonical_key(cache_key).encode("utf-8")).hexdigest()
    return Path(cache_dir) / f"{digest}.pt"


def _load_cache(path: Path, key_json: str):
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: recompute rather than fail
        logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key_json or blob.get("format") != _CACHE_FORMAT:
        logger.warning("feature cache %s does not match its key; recomputing", path)
        return None
    return blob["features"], blob["labels"]


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    cache_key: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "features",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen backbone over a dataset and collect its features.

    The backbone is put in ``eval()`` mode for the pass (BatchNorm uses and keeps its running statistics,
    dropout is off, as in LP-FT's ``extract_features.py``) and returned to its previous mode afterwards,
    even on error. Nothing in the backbone (parameters or buffers) is modified.

    Args:
        backbone: module mapping an image batch ``[B, 3, H, W]`` to features ``[B, D]``.
        dataset: map-style dataset yielding ``(image tensor, int label)``.
        batch_size: images per forward pass.
        num_workers: DataLoader workers (persistent when > 0).
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ... (see :func:`resolve_device`). The backbone is
            moved there (and stays there).
        cache_dir: directory for the feature cache; used only together with ``cache_key``.
        cache_key: JSON-serialisable dict naming everything the features depend on (backbone name,
            weights_id, benchmark, split, transform repr, seed, ...). A cache hit does no forward pass.
        progress: show a tqdm bar over batches (rank 0 only).
        desc: label of the progress bar.
        precision: ``"fp32"`` or ``"bf16"`` (autocast); part of what a cache key must name.

    Returns:
        ``(features, labels)``: ``[N, D]`` float32 CPU tensor and ``[N]`` int64 CPU tensor, in dataset order.

    Raises:
        ValueError: on bad arguments, or when the backbone does not return a ``[B, D]`` tensor.
    """
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    if (cache_dir is None) != (cache_key is None):
        raise ValueError("cache_dir and cache_key must be given together (or neither)")

    path = key_json = None
    rank, world = rank_world()
    if cache_key is not None:
        key_json = _canonical_key(cache_key)
        path = cache_path(cache_dir, cache_key)
        hit = _load_cache(path, key_json) if path.exists() else None
        if broadcast_flag_all(hit is not None):  # all ranks read the cache, or all recompute
            logger.info("feature cache hit: %s", path)
            return hit

    dev = resolve_device(device)
    on_cuda = dev.type == "cuda"
    # the benchmark loader: decoding in workers, pinned memory on CUDA, corrupt images skipped and
    # counted when the dataset's policy says so
    n_total = len(dataset)
    if world > 1:
        dataset = torch.utils.data.Subset(dataset, shard_indices(n_total))
    loader = make_loader(dataset, batch_size, False, num_workers, dev)
    was_training = backbone.training
    backbone.to(dev)
    if on_cuda:
        backbone.to(memory_format=torch.channels_last)
    backbone.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress or rank != 0, leave=False):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise ValueError("dataset items must be (image tensor, label) pairs")
            images, y = batch[0], batch[1]
            images = to_device(images, dev)
            with autocast(dev, precision):
                out = backbone(images)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"backbone must return [batch, dim] features, got {shape}")
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(y, dtype=torch.long).reshape(-1).cpu())
    finally:
        backbone.train(was_training)

    if world > 1:
        if not feats:
            raise ValueError(f"rank {rank} got no image of a {n_total}-image split over {world} ranks; "
                             f"use fewer processes for this split")
        local = torch.cat(feats).contiguous()
        if local.shape[0] != len(dataset):
            raise ValueError(
                f"rank {rank} skipped {len(dataset) - local.shape[0]} corrupt image(s); a sharded evaluation "
                f"under torchrun needs every image: clean the split (python -m lpft.vision.data check "
                f"--verify-images) or run in one process")
        features = gather_in_order(local, n_total)
        all_labels = gather_in_order(torch.cat(labels).contiguous(), n_total)
    else:
        if not feats:
            raise ValueError("dataset is empty: no features to extract")
        features = torch.cat(feats).contiguous()
        all_labels = torch.cat(labels).contiguous()
    if path is not None and rank == 0:
        torch_save_atomic(
            {"format": _CACHE_FORMAT, "key": key_json, "features": features, "labels": all_labels}, path
        )
    return features, all_labels
