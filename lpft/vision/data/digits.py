"""The offline default benchmark ``digits``: handwritten digits in, typeset and corrupted digits out.

Nothing is downloaded. The in-distribution data are the 1,797 handwritten digits bundled with
scikit-learn (``sklearn.datasets.load_digits``, the UCI *optdigits* test set): 32x32 binary bitmaps whose
4x4 blocks were counted into 8x8 images of values 0-16. They are split once, stratified 60/20/20, with a
fixed split seed (independent of the run seed) into ``id_train`` / ``id_val`` / ``id_test``.

Two OOD splits change only the source of the digits:

* ``typeset``: the ten digits rendered from the TrueType text fonts matplotlib ships (DejaVu Sans / Serif /
  Sans Mono, STIXGeneral, Computer Modern; 21 faces), each with small random rotations and stroke
  thickening, then put through the optdigits preprocessing (crop to the bounding box, scale into the
  32x32 box preserving the aspect ratio with the width capped so the outer columns stay empty, threshold to
  binary, count 4x4 blocks into 8x8 values 0-16). The images therefore have the handwritten set's format
  and ink statistics (mean value ~4.9, ~half zeros) but cleaner, font-shaped strokes.
* ``corrupted``: the ``id_test`` handwriting blurred and noised at the 8x8 level (fixed seed).

Items are ``(PIL.Image "RGB" 32x32, label)``: the 8x8 values scaled 0-16 -> 0-255 and upsampled with
nearest-neighbour; the backbone's transform resizes further. :meth:`DigitsDataset.arrays` gives the raw
8x8 values (``X [N, 64]`` float, ``y [N]``) for pixel-space baselines.

This benchmark is a small, fast, honest stand-in for the distribution-shift benchmarks of Kumar et al.
(2022) "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution" and Wortsman
et al. (2022) "Robust fine-tuning of zero-shot models"; it is not one of their benchmarks.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from lpft.vision.data.base import Benchmark, LabeledDataset, register_benchmark
from lpft.vision.data.digits_render import (  # noqa: F401  (re-exported: the rendering helpers' old home)
    RENDER_HEIGHT, ROTATION_DEG, THICKEN_RANGE, TYPESET_SEED, WIDTH_CAP, block_count, font_dir, optdigits_bitmap,
    render_glyph, typeset_variants, values_to_image,
)

__all__ = [
    "CLASSNAMES",
    "TEMPLATES",
    "SPLITS",
    "FONT_FILES",
    "SPLIT_SEED",
    "TYPESET_SEED",
    "CORRUPT_SEED",
    "DigitsBenchmark",
    "DigitsDataset",
    "DIGITS",
    "digits_arrays",
    "font_dir",
    "typeset_fonts",
    "render_glyph",
    "optdigits_bitmap",
    "block_count",
    "values_to_image",
    "typeset_variants",
    "render_typeset",
]

CLASSNAMES = [str(k) for k in range(10)]
TEMPLATES = [
    'a photo of the number: "{}".',
    "a photo of the digit {}.",
    "an image of the number {}.",
    "a black and white photo of the digit {}.",
    "a low resolution picture of the number {}.",
]
SPLITS = {"id_train": "id", "id_val": "id", "id_test": "id", "typeset": "ood", "corrupted": "ood"}

#: seed of the stratified ID split; fixed, independent of the run seed
SPLIT_SEED = 0
#: fractions of the ID data in id_train / id_val / id_test
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)

#: the text fonts shipped in matplotlib's ``mpl-data/fonts/ttf`` (symbol-only faces left out)
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)
#: variants (rotation, thickening) rendered per font and digit
TYPESET_VARIANTS = 10

#: seed, Gaussian blur sigma (in 8x8 pixels) and additive noise std (in 0-16 units) of ``corrupted``
CORRUPT_SEED = 0
CORRUPT_BLUR_SIGMA = 0.8
CORRUPT_NOISE_STD = 2.0


# --------------------------------------------------------------------------------------------------
# fonts
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def typeset_fonts() -> tuple[Path, ...]:
    """The fonts of :data:`FONT_FILES` that exist in matplotlib's data path and have all ten digit glyphs.

    A font that is missing or lacks a digit is skipped with a warning (a font whose digits then render
    empty is skipped the same way when the split is built; ``split_info["fonts"]`` lists the fonts used).
    """
    from matplotlib.ft2font import FT2Font

    root = font_dir()
    ok = []
    for name in FONT_FILES:
        path = root / name
        try:
            font = FT2Font(str(path))
            missing = [k for k in range(10) if font.get_char_index(ord(str(k))) == 0]
        except (OSError, RuntimeError, ValueError) as err:
            warnings.warn(f"digits/typeset: skipping font {name}: {err}", stacklevel=2)
            continue
        if missing:
            warnings.warn(f"digits/typeset: skipping font {name}: no glyphs for digits {missing}", stacklevel=2)
            continue
        ok.append(path)
    if not ok:
        raise RuntimeError(f"digits/typeset: none of the expected fonts has digit glyphs under {root}")
    return tuple(ok)


# --------------------------------------------------------------------------------------------------
# the split arrays (cached per process; returned read-only)
# --------------------------------------------------------------------------------------------------


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=None)
def _handwritten() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _readonly(np.asarray(d.data, dtype=np.float64), np.asarray(d.target, dtype=np.int64))


@functools.lru_cache(maxsize=None)
def _id_indices() -> dict[str, np.ndarray]:
    """Stratified 60/20/20 split of the handwritten digits with :data:`SPLIT_SEED` (sorted indices)."""
    from sklearn.model_selection import train_test_split

    _, y = _handwritten()
    idx = np.arange(len(y))
    f_train, f_val, f_test = SPLIT_FRACTIONS
    train, rest = train_test_split(idx, train_size=f_train, stratify=y, random_state=SPLIT_SEED)
    val, test = train_test_split(
        rest, test_size=f_test / (f_val + f_test), stratify=y[rest], random_state=SPLIT_SEED
    )
    return {k: _readonly(np.sort(v))[0] for k, v in (("id_train", train), ("id_val", val), ("id_test", test))}


def render_typeset(variants: int = TYPESET_VARIANTS, stream: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Typeset digits of every usable font: ``variants`` renders per (font, digit) from random stream ``stream``.

    ``render_typeset()`` (10 variants, stream 0) is exactly the ``typeset`` split; another ``stream`` (>= 1)
    gives fresh renders of the same fonts through the same pipeline, independent of the split (the offline
    lab's pretraining pool). Not cached: callers cache what they keep.

    Args:
        variants: renders per font and digit (>= 1).
        stream: random stream of :func:`~lpft.vision.data.digits_render.typeset_variants` (0: the split's).

    Returns:
        ``(X [N, 64] float64 values 0-16, y [N] int64, fonts used)``, ordered by font, then digit, then variant.

    Raises:
        ValueError: ``variants < 1`` or a negative ``stream``.
        RuntimeError: no font renders the digits.
    """
    if int(variants) != variants or variants < 1:
        raise ValueError(f"variants must be a positive integer, got {variants!r}")
    if int(stream) != stream or stream < 0:
        raise ValueError(f"stream must be an integer >= 0, got {stream!r}")
    xs, ys, used = [], [], []
    for path in typeset_fonts():
        font_index = FONT_FILES.index(path.name)
        try:
            per_font = [typeset_variants(path, font_index, k, variants, stream) for k in range(10)]
        except ValueError as err:  # a digit renders empty
            warnings.warn(f"digits/typeset: skipping font {path.name}: {err}", stacklevel=2)
            continue
        used.append(path.name)
        for k, vs in enumerate(per_font):
            xs.extend(v.reshape(64) for v in vs)
            ys.extend([k] * len(vs))
    if not used:
        raise RuntimeError("digits/typeset: no font rendered the digits")
    return np.stack(xs).astype(np.float64), np.asarray(ys, dtype=np.int64), tuple(used)


@functools.lru_cache(maxsize=None)
def _typeset() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    X, y, used = render_typeset(TYPESET_VARIANTS, 0)
    return (*_readonly(X, y), used)


@functools.lru_cache(maxsize=None)
def _corrupted() -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    X, y = _handwritten()
    idx = _id_indices()["id_test"]
    imgs = X[idx].reshape(-1, 8, 8)
    # blur within each image only (sigma 0 along the sample axis)
    blurred = ndimage.gaussian_filter(imgs, sigma=(0, CORRUPT_BLUR_SIGMA, CORRUPT_BLUR_SIGMA), mode="constant")
    rng = np.random.default_rng(CORRUPT_SEED)
    noisy = blurred + rng.normal(0.0, CORRUPT_NOISE_STD, size=blurred.shape)
    Xc = np.clip(np.rint(noisy), 0, 16).reshape(-1, 64).astype(np.float64)
    return _readonly(Xc, y[idx].copy())


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw 8x8 values of a ``digits`` split.

    Args:
        split: one of ``id_train``, ``id_val``, ``id_test``, ``typeset``, ``corrupted``.

    Returns:
        ``(X, y)``: ``X`` float64 ``[N, 64]`` with values 0-16 (row-major 8x8), ``y`` int64 ``[N]`` in 0..9.
        Fresh copies; the per-process cache is not exposed.
    """
    if split not in SPLITS:
        raise ValueError(f"benchmark 'digits' has no split {split!r}; expected one of: {', '.join(SPLITS)}")
    if split in ("id_train", "id_val", "id_test"):
        X, y = _handwritten()
        idx = _id_indices()[split]
        return X[idx].copy(), y[idx].copy()
    if split == "typeset":
        X, y, _ = _typeset()
    else:
        X, y = _corrupted()
    return X.copy(), y.copy()


def _split_info(split: str, n: int) -> dict:
    info: dict = {"split": split, "size": n, "values": "8x8 block counts 0-16, shown as 32x32 RGB"}
    if split in ("id_train", "id_val", "id_test", "corrupted"):
        info.update(
            source="sklearn.datasets.load_digits (UCI optdigits, 1797 handwritten digits)",
            split_seed=SPLIT_SEED,
            split_fractions=list(SPLIT_FRACTIONS),
            id_sizes={k: int(len(v)) for k, v in _id_indices().items()},
        )
    if split == "corrupted":
        info.update(
            base_split="id_test",
            blur_sigma=CORRUPT_BLUR_SIGMA,
            noise_std=CORRUPT_NOISE_STD,
            corrupt_seed=CORRUPT_SEED,
        )
    if split == "typeset":
        info.update(
            source="digits rendered from matplotlib's bundled TrueType fonts",
            fonts=list(_typeset()[2]),
            variants_per_glyph=TYPESET_VARIANTS,
            rotation_deg=[-ROTATION_DEG, ROTATION_DEG],
            thicken_range=list(THICKEN_RANGE),
            width_cap=WIDTH_CAP,
            render_height=RENDER_HEIGHT,
            typeset_seed=TYPESET_SEED,
        )
    return info


# --------------------------------------------------------------------------------------------------
# dataset and benchmark
# --------------------------------------------------------------------------------------------------


class DigitsDataset(LabeledDataset):
    """One split of ``digits``: ``(PIL RGB 32x32 image, label)`` items over 8x8 values 0-16."""

    classnames = CLASSNAMES

    def __init__(self, split: str, transform: Callable | None = None):
        super().__init__(transform)
        self.split = split
        self._X, self._y = digits_arrays(split)
        #: positions in ``load_digits()`` of the handwritten items (ID splits and ``corrupted``); None for typeset
        self.source_indices: np.ndarray | None = (
            None if split == "typeset" else _id_indices()["id_test" if split == "corrupted" else split].copy()
        )
        self.split_info = _split_info(split, len(self._y))

    def __len__(self) -> int:
        return len(self._y)

    def load_item(self, index: int):
        return values_to_image(self._X[index]), int(self._y[index])

    @property
    def targets(self) -> np.ndarray:
        """Labels ``[N]`` (a copy)."""
        return self._y.copy()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X [N, 64] float64 values 0-16, y [N] int64)`` copies, for pixel-space baselines."""
        return self._X.copy(), self._y.copy()


class DigitsBenchmark(Benchmark):
    """The offline ``digits`` benchmark (no data root); see the module docstring."""

    def read_split(self, root, split, transform, *, selection, options) -> DigitsDataset:
        """Read ``split`` (``root`` is ignored; no paper selection set, so ``selection`` is ``"heldout"``)."""
        return DigitsDataset(split, transform)


DIGITS = register_benchmark(
    DigitsBenchmark(
        name="digits",
        classnames=list(CLASSNAMES),
        splits=dict(SPLITS),
        templates=list(TEMPLATES),
        layout=(
            "needs no data root: the handwritten digits ship with scikit-learn (load_digits) and the typeset "
            "digits are rendered from matplotlib's bundled fonts at first use (cached per process)"
        ),
        how_to_get="nothing to download; it needs only the installed scikit-learn and matplotlib",
        needs_root=False,
    )
)
