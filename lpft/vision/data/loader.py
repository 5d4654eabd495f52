"""Fast DataLoaders for the image benchmarks: decoding in workers, pinned memory, persistent workers."""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from lpft.vision.data.folders import SkippedImage


def collate_images(batch: list) -> tuple:
    """Collate ``(image, label)`` items, dropping :class:`SkippedImage` placeholders.

    Tensors are stacked (into shared memory inside a worker); ``(C,H,W)`` views of ``(H,W,C)`` memory, as
    ``pil_to_tensor`` makes, are stacked as stored and returned as an ``(N,C,H,W)`` channels-last view (same
    values, not contiguous). Non-tensor images (PIL, when no transform is set) stay a list. Returns
    ``(images, labels, skipped_paths)``.
    """
    skipped = [b.path for b in batch if isinstance(b, SkippedImage)]
    items = [b for b in batch if not isinstance(b, SkippedImage)]
    if not items:
        return None, torch.empty(0, dtype=torch.long), skipped
    imgs = [it[0] for it in items]
    labels = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
    if _channels_last_views(imgs):
        # (C,H,W) views of (H,W,C) memory, e.g. pil_to_tensor: stack the memory as is (a plain copy instead
        # of a strided gather) and hand back the same values as an (N,C,H,W) channels-last view
        images: Any = default_collate([t.permute(1, 2, 0) for t in imgs]).permute(0, 3, 1, 2)
    elif isinstance(imgs[0], torch.Tensor) or all(hasattr(i, "shape") for i in imgs):
        # default_collate stacks straight into shared memory inside a worker (no extra copy to ship it)
        images = default_collate(imgs)
    else:
        images = imgs
    return images, labels, skipped


def _channels_last_views(imgs: list) -> bool:
    t0 = imgs[0]
    if not isinstance(t0, torch.Tensor) or t0.dim() != 3 or t0.is_contiguous():
        return False
    return all(
        isinstance(t, torch.Tensor) and t.shape == t0.shape and t.dtype == t0.dtype and t.permute(1, 2, 0).is_contiguous()
        for t in imgs
    )


def _worker_init(_worker_id: int) -> None:
    # one intra-op thread per worker: W workers on W cores, no oversubscription
    torch.set_num_threads(1)


class ImageLoader(DataLoader):
    """A DataLoader yielding ``(images, labels)`` that counts skipped corrupt images.

    ``skipped_images`` lists the files skipped during the last pass; a warning with their count is issued
    when a pass ends with any.
    """

    skipped_images: list[str]

    def __iter__(self) -> Iterator[tuple]:
        self.skipped_images = []
        for images, labels, skipped in super().__iter__():
            if skipped:
                self.skipped_images.extend(skipped)
            if images is None:
                continue
            yield images, labels
        if self.skipped_images:
            warnings.warn(
                f"skipped {len(self.skipped_images)} corrupt image(s) in this pass, e.g. {self.skipped_images[0]}",
                RuntimeWarning,
                stacklevel=2,
            )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    device: str | torch.device | None = None,
    *,
    drop_last: bool = False,
    seed: int | None = None,
    on_corrupt: str | None = None,
    prefetch_factor: int | None = None,
) -> ImageLoader:
    """DataLoader for a benchmark split, tuned for throughput.

    Images are decoded (and transformed) inside the ``num_workers`` worker processes, each limited to one
    torch thread; workers persist across epochs (no re-fork per epoch); batches go to pinned memory when
    ``device`` is CUDA so that ``.to(device, non_blocking=True)`` overlaps the copy.

    Args:
        dataset: a :class:`~lpft.vision.data.base.LabeledDataset` (any map-style dataset of
            ``(image, label)`` works).
        batch_size: images per batch.
        shuffle: reshuffle every epoch (seeded by ``seed`` when given, for reproducible order).
        num_workers: decoding processes; 0 decodes in the calling process.
        device: where batches will be used; pinned memory only for CUDA.
        drop_last: drop the last incomplete batch.
        seed: seed of the shuffling generator.
        on_corrupt: ``"stop"`` or ``"skip"``; sets the dataset's corrupt-image policy when it has one
            (skipped files are dropped from their batch and listed in ``loader.skipped_images``).
        prefetch_factor: batches prefetched per worker (torch default 2).

    Returns:
        An :class:`ImageLoader` yielding ``(images, labels)``; ``images`` is a stacked tensor when the
        transform returns tensors, else a list of PIL images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if on_corrupt is not None:
        if not hasattr(dataset, "on_corrupt"):
            raise ValueError(f"dataset {type(dataset).__name__} has no corrupt-image policy (on_corrupt)")
        dataset.on_corrupt = on_corrupt
    pin = torch.device(device).type == "cuda" if device is not None else False
    generator = None
    if shuffle and seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        kwargs["worker_init_fn"] = _worker_init
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return ImageLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=drop_last,
        collate_fn=collate_images,
        generator=generator,
        **kwargs,
    )
