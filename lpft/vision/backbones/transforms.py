"""Image preprocessing shared by the backbones (picklable, so it works in DataLoader worker processes).

Every backbone carries default transforms built here from its normalisation statistics, interpolation and
input side (:attr:`~lpft.vision.backbones.Backbone.norm_mean` and friends), so that a benchmark can also
build its own transforms from the same facts.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "ToRGB", "make_transforms"]

# OpenAI CLIP's preprocessing statistics (Radford et al. 2021; open_clip's OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision's ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToRGB:
    """Convert a PIL image of any mode ("L", "P", "RGBA", "I;16", ...) to RGB."""

    def __call__(self, img):
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}")
        if img.mode == "RGB":
            return img
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # Wide integer / float greyscale: rescale to 8 bits instead of clipping at 255.
            import numpy as np

            a = np.asarray(img, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
            img = Image.fromarray(a.round().astype(np.uint8), mode="L")
        return img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def make_transforms(
    size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: InterpolationMode,
    resize: int,
    train_scale: tuple[float, float] | None,
    flip: bool,
    augment: bool,
) -> tuple[Callable, Callable]:
    """A backbone's default ``(train_transform, eval_transform)``, PIL image -> float tensor ``[3, size, size]``.

    Eval: RGB -> Resize(shorter side to ``resize``) -> CenterCrop(``size``) -> tensor -> Normalize.
    Train: RGB -> RandomResizedCrop(``size``, scale=``train_scale``) [-> horizontal flip] -> tensor ->
    Normalize. Without ``augment`` (or without ``train_scale``) the train transform *is* the eval transform.

    Args:
        size: output side.
        mean / std: per-channel normalisation.
        interpolation: resampling for Resize and RandomResizedCrop.
        resize: shorter side before the eval centre crop.
        train_scale: RandomResizedCrop area range, or None for no random crop.
        flip: add a random horizontal flip to the train transform.
        augment: whether the train transform is augmented at all.

    Returns:
        ``(train_transform, eval_transform)``.
    """
    tail = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    eval_tf = T.Compose(
        [ToRGB(), T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *tail]
    )
    if not augment or train_scale is None:
        return eval_tf, eval_tf
    train = [ToRGB(), T.RandomResizedCrop(size, scale=train_scale, interpolation=interpolation)]
    if flip:
        train.append(T.RandomHorizontalFlip())
    return T.Compose([*train, *tail]), eval_tf
