"""Shared machinery of the on-disk benchmarks: facts, image folders, held-out splits, corrupt images.

Everything here works on plain files so that a benchmark's loader and ``python -m lpft.vision.data check``
see the same thing. Images are decoded lazily in ``load_item`` (i.e. inside DataLoader workers, see
:mod:`lpft.vision.data.loader`), never when a split is opened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from lpft.vision.data.base import Benchmark, DatasetNotFoundError, LabeledDataset

FACTS_DIR = Path(__file__).with_name("facts")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")
#: seed of every held-out validation split carved from a training set (recorded in ``split_info``)
HOLDOUT_SEED = 0
CORRUPT_MODES = ("stop", "skip")


class DatasetIncompleteError(DatasetNotFoundError):
    """Part of a dataset is present but files or class folders are missing.

    ``found`` / ``expected`` hold the counts (images or files) when known.
    """

    def __init__(self, msg: str, found: int | None = None, expected: int | None = None):
        super().__init__(msg)
        self.found = found
        self.expected = expected


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


@functools.lru_cache(maxsize=None)
def load_facts(name: str) -> dict:
    """The facts file ``facts/<name>.json`` shipped with the package (class lists, mappings, counts)."""
    path = FACTS_DIR / f"{name}.json"
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


_SCAN_CACHE: dict[str, list[str]] | None = None


@contextlib.contextmanager
def cached_listings():
    """Within this context, :func:`list_images` remembers folder listings (``check`` scans ImageNet once)."""
    global _SCAN_CACHE
    old, _SCAN_CACHE = _SCAN_CACHE, {}
    try:
        yield
    finally:
        _SCAN_CACHE = old


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted image file names directly inside ``folder`` (by extension, case-insensitive)."""
    key = os.fspath(folder)
    if _SCAN_CACHE is not None and key in _SCAN_CACHE:
        return _SCAN_CACHE[key]
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if is_image_file(e.name) and e.is_file())
    if _SCAN_CACHE is not None:
        _SCAN_CACHE[key] = names
    return names


def find_dir(root: str | os.PathLike, candidates: Iterable[str]) -> Path | None:
    """The first ``root/<candidate>`` that is a directory, else ``None``."""
    for c in candidates:
        p = Path(root) / c
        if p.is_dir():
            return p
    return None


def incomplete(
    bench: Benchmark, what: str, detail: str, found: int | None = None, expected: int | None = None
) -> DatasetIncompleteError:
    """Like ``bench.missing`` but for a partially present dataset."""
    return DatasetIncompleteError(str(bench.missing(what, detail)), found=found, expected=expected)


def default_corrupt_mode() -> str:
    """``stop`` unless the environment variable ``LPFT_ON_CORRUPT`` says ``skip``."""
    mode = os.environ.get("LPFT_ON_CORRUPT", "stop")
    if mode not in CORRUPT_MODES:
        raise ValueError(f"LPFT_ON_CORRUPT must be one of {CORRUPT_MODES}, got {mode!r}")
    return mode


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image; undecodable files raise :class:`CorruptImageError`."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now, inside the worker; the file is closed on exit
            return im if im.mode == "RGB" else im.convert("RGB")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"corrupt or unreadable image file {path}: {e}") from e


class SkippedImage:
    """Placeholder returned for a corrupt image in ``on_corrupt='skip'`` mode (dropped by the loader)."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = str(path)

    def __reduce__(self):
        return (SkippedImage, (self.path,))

    def __repr__(self) -> str:
        return f"SkippedImage({self.path!r})"


class GroupMaxProjection:
    """Projects head logits to one logit per group: the max over the group's columns.

    ObjectNet (WiSE-FT, Wortsman et al. 2022): each of the 113 ObjectNet classes takes the max of the logits
    of the ImageNet classes it corresponds to.
    """

    def __init__(self, groups: Sequence[Sequence[int]]):
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError("every group needs at least one column index")
        width = max(len(g) for g in groups)
        # pad by repeating the first index: it cannot change the max
        self.index = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in groups], dtype=torch.long)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        idx = self.index.to(logits.device)
        return logits[:, idx].amax(dim=-1)


class ImageDataset(LabeledDataset):
    """A split backed by image files or arrays: ``samples[i]`` is ``(source, label)``.

    Args:
        samples: ``(path, label)`` pairs (or any source understood by ``loader``).
        classnames: names of the label space of ``label`` (what ``project_logits`` outputs).
        transform: applied to the PIL image.
        class_mask: head columns that compete (labels then live in the head's space), or ``None``.
        projection: callable ``logits -> projected logits`` (overrides ``class_mask``), or ``None``.
        border_crop: pixels cut from every side before ``transform`` (ObjectNet: 2).
        split_info: facts recorded in the run config.
        loader: ``source -> PIL image``; defaults to :func:`open_image`.
        on_corrupt: ``"stop"`` (raise, default) or ``"skip"`` (``__getitem__`` returns a
            :class:`SkippedImage` that :func:`lpft.vision.data.loader.make_loader` drops and counts).
    """

    def __init__(
        self,
        samples: Sequence[tuple],
        classnames: Sequence[str],
        transform: Callable | None = None,
        *,
        class_mask: Sequence[int] | None = None,
        projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
        border_crop: int = 0,
        split_info: dict | None = None,
        loader: Callable | None = None,
        on_corrupt: str | None = None,
    ):
        super().__init__(transform)
        self.samples = list(samples)
        self.classnames = list(classnames)
        self.class_mask = None if class_mask is None else list(class_mask)
        self.projection = projection
        self.border_crop = int(border_crop)
        self.loader = loader
        self.split_info = dict(split_info or {})
        self.split_info.setdefault("size", len(self.samples))
        self.on_corrupt = on_corrupt or default_corrupt_mode()

    @property
    def on_corrupt(self) -> str:
        return self._on_corrupt

    @on_corrupt.setter
    def on_corrupt(self, mode: str) -> None:
        if mode not in CORRUPT_MODES:
            raise ValueError(f"on_corrupt must be one of {CORRUPT_MODES}, got {mode!r}")
        self._on_corrupt = mode

    @property
    def targets(self) -> list[int]:
        return [int(s[1]) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_item(self, index: int):
        src, label = self.samples[index][:2]
        img = open_image(src) if self.loader is None else self.loader(src)
        b = self.border_crop
        if b:
            w, h = img.size
            img = img.crop((b, b, max(b + 1, w - b), max(b + 1, h - b)))
        return img, int(label)

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except CorruptImageError:
            if self.on_corrupt == "skip":
                return SkippedImage(str(self.samples[index][0]))
            raise

    def project_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(logits)
        return super().project_logits(logits)


def holdout_split(n: int, fraction: float, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (train, held-out val) index arrays, both sorted.

    The held-out part has ``round(fraction * n)`` items (at least 1 when ``n >= 2``), drawn with
    ``numpy.random.RandomState(seed)``: the same files always give the same split.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    n_val = 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def holdout_sizes(n: int, fraction: float) -> tuple[int, int]:
    """(train, val) sizes :func:`holdout_split` gives for ``n`` items."""
    n_val = 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))
    return n - n_val, n_val


def apply_holdout(samples: list, split: str, fraction: float, seed: int = HOLDOUT_SEED) -> tuple[list, dict]:
    """Select the ``id_train`` or ``id_val`` part of ``samples``; returns (samples, split_info)."""
    tr, va = holdout_split(len(samples), fraction, seed)
    idx = tr if split == "id_train" else va
    info = {
        "holdout_seed": seed,
        "holdout_fraction": fraction,
        "holdout_of": len(samples),
        "id_train_size": len(tr),
        "id_val_size": len(va),
    }
    return [samples[i] for i in idx], info


def select_train(
    samples: list, split: str, selection: str, fraction: float, seed: int = HOLDOUT_SEED
) -> tuple[list, dict]:
    """``id_train`` / ``id_val`` out of the official train split ``samples`` under ``selection``.

    ``"heldout"``: :func:`apply_holdout` (a seeded ``fraction`` is ``id_val``). ``"paper"``: ``id_train`` is
    all of ``samples`` (the paper's ``id_val`` is another split, see ``Benchmark.split_source``).

    Returns:
        ``(samples, split_info)``.
    """
    if selection == "heldout":
        return apply_holdout(samples, split, fraction, seed)
    if selection != "paper" or split != "id_train":
        raise ValueError(f"the train split gives id_train (selection 'paper') or id_train/id_val ('heldout'), "
                         f"not {split!r} under {selection!r}")
    return list(samples), {"train_split": "full", "holdout_fraction": None}


def train_val_sizes(n_train: int, n_test: int, selection: str, fraction: float) -> tuple[int, int]:
    """(``id_train``, ``id_val``) sizes for an official train split of ``n_train`` and test split of ``n_test``."""
    if selection == "paper":
        return n_train, n_test
    if selection != "heldout":
        raise ValueError(f"selection must be 'heldout' or 'paper', got {selection!r}")
    return holdout_sizes(n_train, fraction)


def scan_class_folders(
    bench: Benchmark,
    base: Path,
    folders: Sequence[str],
    labels: Sequence[int],
    *,
    what: str,
    official: int | None = None,
) -> list[tuple[str, int]]:
    """``(path, label)`` for every image in ``base/<folder>/`` (folders paired with labels).

    Raises :class:`DatasetIncompleteError` naming the missing or empty class folders.
    """
    samples: list[tuple[str, int]] = []
    missing, empty = [], []
    for folder, label in zip(folders, labels):
        d = base / folder
        if not d.is_dir():
            missing.append(folder)
            continue
        names = list_images(d)
        if not names:
            empty.append(folder)
        samples.extend((str(d / n), int(label)) for n in names)
    if missing or empty:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(folders)} class folders missing (e.g. {', '.join(missing[:5])})")
        if empty:
            parts.append(f"{len(empty)} class folders without images (e.g. {', '.join(empty[:5])})")
        off = f"; official count {official:,}" if official else ""
        raise incomplete(
            bench,
            f"{what} at {base}",
            "; ".join(parts) + f"; found {len(samples):,} images in {len(folders) - len(missing) - len(empty)} "
            f"of {len(folders)} expected class folders{off}",
            found=len(samples),
            expected=official,
        )
    return samples
