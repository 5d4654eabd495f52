"""Rendering helpers of the ``digits`` benchmark: optdigits-style preprocessing and typeset glyphs.

The optdigits pipeline (crop a glyph to its bounding box, scale it into the 32x32 box, threshold, count 4x4
blocks into 8x8 values 0-16) and the rasterisation of matplotlib's TrueType fonts, shared by the ``typeset``
split of :mod:`lpft.vision.data.digits` and by anything that needs fresh renders from another random
stream (the offline lab's pretraining pool, :mod:`lpft.vision.lab.pool`). See :mod:`lpft.vision.data.digits`
for how the splits use them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "TYPESET_SEED",
    "ROTATION_DEG",
    "THICKEN_RANGE",
    "RENDER_HEIGHT",
    "WIDTH_CAP",
    "block_count",
    "optdigits_bitmap",
    "values_to_image",
    "font_dir",
    "render_glyph",
    "typeset_variants",
]

#: base seed of the typeset variants; each (font, digit) pair draws from its own stream
TYPESET_SEED = 0
#: rotations are drawn uniformly from [-ROTATION_DEG, ROTATION_DEG]
ROTATION_DEG = 10.0
#: stroke thickening: disk-dilation radius drawn uniformly from this range, as a fraction of the
#: glyph height (0.035 of a 32-pixel-high digit is 1.1 pixels). Chosen so that the typeset ink matches
#: the handwritten set's (mean value 4.96 vs 4.88, zeros 47% vs 49%).
THICKEN_RANGE = (0.0, 0.035)
#: glyph height in pixels at which fonts are rasterised before the optdigits preprocessing
RENDER_HEIGHT = 64
#: widest a digit may be in the 32x32 box. Chosen from the handwritten data: with 22 the typeset
#: images keep columns 0 and 7 of the 8x8 grid empty and match the handwritten row/column profiles
#: (handwritten: 0.2% / 2.7% of images have ink in column 0 / 7).
WIDTH_CAP = 22


# --------------------------------------------------------------------------------------------------
# optdigits-style preprocessing
# --------------------------------------------------------------------------------------------------


def block_count(bitmap: np.ndarray) -> np.ndarray:
    """Count the set pixels of each 4x4 block of a 32x32 binary bitmap (optdigits' 8x8 values 0-16).

    Args:
        bitmap: ``[32, 32]`` boolean (or 0/1) array.

    Returns:
        ``[8, 8]`` int64 array with values in 0..16.
    """
    b = np.asarray(bitmap)
    if b.shape != (32, 32):
        raise ValueError(f"block_count expects a 32x32 bitmap, got shape {b.shape}")
    return (b != 0).reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.int64)


def optdigits_bitmap(mask: np.ndarray, width_cap: int = WIDTH_CAP) -> np.ndarray:
    """Normalise a high-resolution binary glyph into the 32x32 box the way optdigits bitmaps look.

    The glyph is cropped to its bounding box, scaled (area averaging) to be 32 pixels high while
    preserving its aspect ratio, unless it would then be wider than ``width_cap`` (then it is
    ``width_cap`` wide and shorter), centred, and thresholded at one half.

    Args:
        mask: 2-D boolean array, ``True`` = ink; must contain ink.
        width_cap: maximum width in pixels of the digit in the 32x32 box (1..32).

    Returns:
        ``[32, 32]`` boolean bitmap.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        raise ValueError(f"optdigits_bitmap expects a 2-D mask with ink, got shape {m.shape}, ink={m.any()}")
    if not 1 <= width_cap <= 32:
        raise ValueError(f"width_cap must be in 1..32, got {width_cap}")
    ys, xs = np.nonzero(m)
    m = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = m.shape
    scale = min(32.0 / h, width_cap / w)
    nh, nw = max(1, min(32, round(h * scale))), max(1, min(width_cap, round(w * scale)))
    small = Image.fromarray(m.astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.BOX)
    out = np.zeros((32, 32), dtype=bool)
    y0, x0 = (32 - nh) // 2, (32 - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = np.asarray(small) >= 128
    return out


def values_to_image(values: np.ndarray) -> Image.Image:
    """The item image of 64 (or 8x8) values 0-16: RGB, scaled to 0-255, nearest-upsampled to 32x32."""
    v = np.asarray(values, dtype=np.float64).reshape(8, 8)
    g = np.clip(np.rint(v * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(g, mode="L").resize((32, 32), Image.Resampling.NEAREST).convert("RGB")


# --------------------------------------------------------------------------------------------------
# fonts and rendering
# --------------------------------------------------------------------------------------------------


def font_dir() -> Path:
    """matplotlib's bundled TrueType folder (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render_glyph(font_path: str | os.PathLike, digit: int, height: int = RENDER_HEIGHT) -> np.ndarray:
    """Rasterise one digit of a TrueType font with matplotlib's FreeType wrapper.

    Args:
        font_path: path of a ``.ttf`` file.
        digit: 0..9.
        height: approximate glyph height in pixels.

    Returns:
        Boolean ink mask cropped to the glyph's bounding box.

    Raises:
        ValueError: the font has no glyph for the digit, or it renders empty.
    """
    from matplotlib.ft2font import FT2Font

    if not (isinstance(digit, (int, np.integer)) and 0 <= digit <= 9):
        raise ValueError(f"digit must be an int in 0..9, got {digit!r}")
    font = FT2Font(str(font_path))
    ch = str(int(digit))
    if font.get_char_index(ord(ch)) == 0:
        raise ValueError(f"font {font_path} has no glyph for {ch!r}")
    # Digits are ~0.7 em high in these fonts; the exact size does not matter since we crop and rescale.
    font.set_size(height * 1.4, 72)
    font.set_text(ch)
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image()) >= 128
    if not img.any():
        raise ValueError(f"font {font_path} renders {ch!r} empty")
    ys, xs = np.nonzero(img)
    return img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def typeset_variants(path: str | os.PathLike, font_index: int, digit: int, n: int, stream: int = 0) -> list[np.ndarray]:
    """``n`` 8x8 value arrays of one (font, digit): random rotation and thickening, optdigits preprocessing.

    Args:
        path: the font file.
        font_index: the font's position in ``digits.FONT_FILES`` (part of the random stream's seed).
        digit: 0..9.
        n: number of variants.
        stream: 0 draws the ``typeset`` split's own variants (seed ``[TYPESET_SEED, font_index, digit]``);
            ``k >= 1`` draws an independent stream (seed ``[TYPESET_SEED, font_index, digit, k]``), e.g. fresh
            renders for a pretraining pool. (numpy's ``SeedSequence`` ignores a trailing 0, so stream 0 and
            the split's seed are the same stream by construction.)

    Returns:
        ``n`` int64 arrays ``[8, 8]`` with values 0..16.
    """
    from scipy import ndimage

    glyph = render_glyph(path, digit)
    h = glyph.shape[0]
    pad = int(np.ceil(THICKEN_RANGE[1] * h)) + 2
    # Thickening by a disk of radius r = thresholding the distance-to-ink map at r; a disk is rotation
    # invariant, so rotating the distance map (bilinear) and thresholding it rotates and thickens at once.
    dist = ndimage.distance_transform_edt(~np.pad(glyph, pad)).astype(np.float32)
    dist_img = Image.fromarray(dist, mode="F")
    if int(stream) != stream or stream < 0 or int(n) != n or n < 0:
        raise ValueError(f"typeset_variants needs integers n >= 0 and stream >= 0, got n={n!r}, stream={stream!r}")
    seed = [TYPESET_SEED, int(font_index), int(digit)] + ([int(stream)] if stream else [])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        angle = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
        radius = float(rng.uniform(*THICKEN_RANGE)) * h
        rot = dist_img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=1e6)
        # + 0.5 px: with radius 0 the (interpolated) glyph itself is kept, not eroded
        mask = np.asarray(rot) <= radius + 0.5
        out.append(block_count(optdigits_bitmap(mask)))
    return out
