"""Feature distortion: how far fine-tuning moved the penultimate features (Kumar et al. 2022, Sec. 4.3).

LP-FT's claim: fine-tuning changes the features of ID examples more than those of OOD examples, and
LP-FT changes both far less than FT. The official analysis (Kumar et al. 2022, Sec. 4.3; docs/protocols.md) extracts penultimate
features with the pretrained and the fine-tuned backbone, both in eval mode, on the same images with
test transforms, and reports ``mean((f_ft - f_pre) ** 2)`` averaged over examples *and* dimensions; the
same notebook also computes per-example cosine similarity. Both are measured here, plus the mean
per-example Euclidean distance that the paper's text describes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from lpft.vision.data.loader import make_loader


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode and restore each one's previous mode afterwards."""
    states = [[m.training for m in mod.modules()] for mod in modules]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for mod, st in zip(modules, states):
            for m, flag in zip(mod.modules(), st):
                m.train(flag)


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def measure_distortion(
    backbone0: nn.Module,
    backbone1: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean squared change and cosine similarity of features between two backbones on one dataset.

    Args:
        backbone0: the pretrained backbone (images -> features ``[N, D]``).
        backbone1: the fine-tuned backbone (same feature dimension).
        dataset: items ``(image_tensor[3, H, W], label)``, already transformed with the eval transform.
        batch_size: images per forward pass.
        device: where to run both backbones (default: where ``backbone0``'s parameters are). Backbones
            elsewhere are moved there for the measurement and moved back afterwards.
        max_images: only the first ``max_images`` items (all by default).
        num_workers: DataLoader workers.
        progress: show a tqdm bar.

    Returns:
        ``feature_sq_change``: ``mean((f1 - f0) ** 2)`` over examples and dimensions (LP-FT's number);
        ``feature_l2_change``: mean over examples of ``||f1 - f0||_2``;
        ``feature_cosine``: mean over examples of ``cos(f0, f1)``;
        ``num_images``: how many images were used.
    """
    if max_images is not None:
        if max_images <= 0:
            raise ValueError(f"max_images must be positive, got {max_images}")
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("measure_distortion needs a non-empty dataset")
    dev = torch.device(device) if device is not None else _device_of(backbone0)
    homes = [_device_of(backbone0), _device_of(backbone1)]
    backbone0.to(dev)
    backbone1.to(dev)
    # the benchmark loader: decoding in workers, pinned memory on CUDA, the dataset's corrupt-image policy
    loader = make_loader(dataset, batch_size, False, num_workers, dev)
    sq_sum = l2_sum = cos_sum = 0.0
    n = dim = 0
    try:
        with _eval_mode(backbone0, backbone1):
            from lpft.vision.progress import tqdm

            for batch in tqdm(loader, desc="feature distortion", disable=not progress, leave=False):
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                if not torch.is_tensor(x):
                    raise TypeError(
                        f"measure_distortion expects dataset items (image_tensor, label); got {type(x).__name__} "
                        "images: load the split with the backbone's eval_transform"
                    )
                x = x.to(dev)
                f0 = backbone0(x).double()
                f1 = backbone1(x).double()
                if f0.shape != f1.shape:
                    raise ValueError(f"the backbones give features of different shapes: {tuple(f0.shape)} vs "
                                     f"{tuple(f1.shape)}")
                d = f1 - f0
                sq_sum += float(d.pow(2).sum())
                l2_sum += float(d.norm(dim=1).sum())
                cos_sum += float(nn.functional.cosine_similarity(f0, f1, dim=1).sum())
                n += f0.shape[0]
                dim = f0.shape[1]
    finally:
        backbone0.to(homes[0])
        backbone1.to(homes[1])
    return {
        "feature_sq_change": sq_sum / (n * dim),
        "feature_l2_change": l2_sum / n,
        "feature_cosine": cos_sum / n,
        "num_images": n,
    }
