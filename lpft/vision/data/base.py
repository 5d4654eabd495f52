"""The benchmark contract and registry.

A :class:`Benchmark` declares its training class names, its splits (``id_train``, ``id_val``, ``id_test``
plus named OOD splits, each tagged ``"id"`` or ``"ood"``), zero-shot prompt templates, and how to load a
split from a data root. Loading returns a :class:`LabeledDataset`: a torch ``Dataset`` of
``(image, label)`` pairs (``image`` is a PIL image, or whatever ``transform`` makes of it) that knows its
``classnames`` and how its logits are evaluated:

* ``class_mask``: for label spaces that are a subset of the head's classes (ImageNet-R / -A: labels are
  ImageNet indices and only the 200 masked logits compete), else ``None``;
* ``project_logits(logits)``: maps head logits (N, num_head_classes) to the logits whose argmax is
  compared with the labels (mask, or ObjectNet's max-pool over ImageNet classes); identity by default.

The runner uses only this contract, so a benchmark added by a user (``register_benchmark``) runs with
every method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from lpft.vision.registry import Registry

SPLIT_SHIFTS = ("id", "ood")
ID_SPLITS = ("id_train", "id_val", "id_test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or part of it) is missing; the message names the expected layout and how to get it."""


class LabeledDataset(Dataset):
    """Base class of every split: ``(image, label)`` items plus evaluation metadata.

    Subclasses implement ``__len__`` and ``load_item(i) -> (PIL.Image, int)``; the transform is applied
    here so that subclasses never deal with it.
    """

    classnames: Sequence[str] = ()
    class_mask: Sequence[int] | None = None
    #: free-form facts recorded in the run config (split seed, size, source files, ...)
    split_info: dict[str, Any]

    def __init__(self, transform: Callable | None = None):
        self.transform = transform
        self.split_info = {}

    def load_item(self, index: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int):
        img, label = self.load_item(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def project_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits whose argmax is compared with this split's labels (identity unless masked)."""
        if self.class_mask is None:
            return logits
        out = torch.full_like(logits, float("-inf"))
        idx = torch.as_tensor(list(self.class_mask), device=logits.device)
        out[:, idx] = logits[:, idx]
        return out


@dataclass
class Benchmark:
    """Declaration of one benchmark. Subclass and implement :meth:`load`."""

    name: str
    classnames: list[str]
    #: split name -> "id" | "ood"; must contain id_train, id_val, id_test
    splits: dict[str, str]
    #: zero-shot prompt templates with one ``{}`` for the class name
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    #: human-readable on-disk layout under --data-root (used in error messages and ``check``)
    layout: str = ""
    #: how to obtain the data (command or URL), used in error messages
    how_to_get: str = ""
    #: False for benchmarks that need no data root (the offline ``digits``)
    needs_root: bool = True
    #: extra reported metrics: name -> eval splits whose metric is averaged (domainnet: ``ood_avg``)
    split_averages: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        for s in ID_SPLITS:
            if self.splits.get(s) != "id":
                raise ValueError(f"benchmark {self.name}: split {s!r} must be declared with shift 'id'")
        bad = {k: v for k, v in self.splits.items() if v not in SPLIT_SHIFTS}
        if bad:
            raise ValueError(f"benchmark {self.name}: shifts must be 'id' or 'ood', got {bad}")
        for avg, members in self.split_averages.items():
            unknown = [m for m in members if m not in self.splits]
            if unknown or avg in self.splits:
                raise ValueError(f"benchmark {self.name}: split average {avg!r} must name existing splits, got {members}")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def ood_splits(self) -> list[str]:
        return [s for s, sh in self.splits.items() if sh == "ood"]

    @property
    def eval_splits(self) -> list[str]:
        """Every split evaluated after training (all but ``id_train``)."""
        return [s for s in self.splits if s != "id_train"]

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(
                f"benchmark {self.name!r} has no split {split!r}; expected one of: {', '.join(self.splits)}"
            )

    def load(self, root: str | os.PathLike | None, split: str, transform: Callable | None = None) -> LabeledDataset:
        raise NotImplementedError

    def missing(self, what: str | os.PathLike, detail: str = "") -> DatasetNotFoundError:
        """A :class:`DatasetNotFoundError` naming ``what`` was expected, the layout and how to get it."""
        msg = f"{self.name}: expected {what}"
        if detail:
            msg += f" ({detail})"
        if self.layout:
            msg += f"\nexpected layout under --data-root:\n{self.layout}"
        if self.how_to_get:
            msg += f"\nto get it: {self.how_to_get}"
        return DatasetNotFoundError(msg)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register_benchmark(bench: Benchmark) -> Benchmark:
    """Add a benchmark instance to the registry (its ``name`` is the key)."""
    return BENCHMARKS.register(bench.name, bench)


def get_benchmark(name: str) -> Benchmark:
    return BENCHMARKS.get(name)


def list_benchmarks() -> list[str]:
    return BENCHMARKS.names()


def load_split(name: str, root: str | os.PathLike | None, split: str, transform: Callable | None = None) -> LabeledDataset:
    """Load split ``split`` of benchmark ``name`` from ``root``.

    Returns a :class:`LabeledDataset` of ``(image, label)`` with ``.classnames`` (and ``.class_mask`` /
    ``.project_logits`` where the benchmark projects logits). Unknown names list the valid ones; a
    missing dataset raises :class:`DatasetNotFoundError` naming the expected layout.
    """
    bench = get_benchmark(name)
    bench.check_split(split)
    if bench.needs_root:
        if root is None:
            raise bench.missing("a --data-root", "none was given")
        if not Path(root).is_dir():
            raise bench.missing(f"data root {root} to be a directory", "it does not exist")
    return bench.load(root, split, transform)
