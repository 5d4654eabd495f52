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
every method. A benchmark whose splits and classes depend on the data (``folder``: the user's own folders)
declares only its ID splits at registration and overrides :meth:`Benchmark.for_root`, which returns it bound
to a data root; the runner and :func:`load_split` always go through ``for_root`` (the identity for the others).

Selection set (``selection``): which data ``id_train`` and ``id_val`` hold.

* ``"heldout"`` (default): ``id_val`` is no reported split: a fixed, seeded fraction of the official train
  split with ``id_train`` the rest (FMoW with ``fmow_val="ood"``: WILDS ID Val), so epoch, LP
  regularisation and learning rate are never chosen on a reported number.
* ``"paper"``: what the official LP-FT code selects on (Kumar et al. 2022; AnanyaKumar/transfer_learning
  ``scripts/run_adaptation_experiments.py``, the ``val_metric`` of each benchmark): ``id_train`` is the
  full official train split and ``id_val`` is the official selection set, which for every LP-FT
  benchmark is the reported ID test set (``split_info["same_as"] == "id_test"``). A benchmark without
  such a set (:attr:`Benchmark.paper_selection` is ``None``) keeps ``"heldout"`` and says so in
  ``split_info``.

Benchmark options (``options``): a benchmark declares the options it accepts in
:attr:`Benchmark.options` (name -> allowed values, the first being the default), e.g. FMoW's
``fmow_val``; anything else is an error naming the valid ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from lpft.vision.registry import Registry

SPLIT_SHIFTS = ("id", "ood")
ID_SPLITS = ("id_train", "id_val", "id_test")
#: selection sets: the default comes first
SELECTIONS = ("heldout", "paper")


def check_selection(selection: str) -> str:
    """``selection`` if it is one of :data:`SELECTIONS`, else a ``ValueError`` naming them."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(map(repr, SELECTIONS))}; got {selection!r}")
    return selection


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
    """Declaration of one benchmark. Subclass and implement :meth:`read_split`.

    :meth:`load` validates the request (split, selection, options), decides which split's data a split
    holds (:meth:`split_source`) and records the selection in ``split_info``; :meth:`read_split` only
    reads data.
    """

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
    #: the official selection set of the paper's code, in words (what ``selection="paper"`` selects on);
    #: ``None`` when there is none and ``"paper"`` falls back to ``"heldout"``
    paper_selection: str | None = None
    #: options the benchmark accepts: name -> allowed values, the first being the default
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: True when the splits and classes are read from the data root (:meth:`for_root` binds them, e.g.
    #: ``folder``); ``check`` looks at such a benchmark only when it is named
    root_defined: bool = False

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
        for opt, values in self.options.items():
            if not values or not all(isinstance(v, str) for v in values):
                raise ValueError(f"benchmark {self.name}: option {opt!r} needs a non-empty tuple of string values")

    def for_root(self, root: str | os.PathLike | None) -> "Benchmark":
        """The benchmark as it is under data root ``root``: its splits, classes and shifts.

        A benchmark declared at registration returns itself. One whose splits and classes depend on the data
        (:attr:`root_defined`, e.g. ``folder``) returns a bound copy; the runner calls this before reading
        :attr:`splits` / :attr:`eval_splits` / :attr:`classnames`, and :func:`load_split` loads through it.

        Raises:
            DatasetNotFoundError: (root-defined benchmarks) the root or the files that define the benchmark
                are missing.
        """
        return self

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

    def resolve_options(self, options: Mapping[str, str] | None) -> dict[str, str]:
        """Every declared option with its value: ``options`` checked against :attr:`options`, defaults filled.

        Raises:
            ValueError: an option the benchmark does not declare, or a value it does not allow (the message
                names the valid ones).
        """
        given = dict(options or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(f"{k} ({'|'.join(v)})" for k, v in self.options.items()) or "none"
            raise ValueError(f"benchmark {self.name!r} has no option {', '.join(map(repr, unknown))}; valid options: {valid}")
        out = {}
        for opt, values in self.options.items():
            value = given.get(opt, values[0])
            if value not in values:
                raise ValueError(
                    f"benchmark {self.name!r}: option {opt!r} must be one of {', '.join(map(repr, values))}; got {value!r}"
                )
            out[opt] = value
        return out

    def selection_used(self, selection: str) -> str:
        """The selection actually used for a request: ``"paper"`` needs :attr:`paper_selection`."""
        check_selection(selection)
        return "heldout" if selection == "paper" and self.paper_selection is None else selection

    def split_source(self, split: str, selection: str, options: Mapping[str, str]) -> str:
        """The split whose data ``split`` holds under ``selection`` (and ``options``).

        Under ``"paper"`` ``id_val`` reads ``id_test``: in every LP-FT benchmark the official selection set
        is the reported ID test set. Override for a benchmark where that is not so.
        """
        return "id_test" if selection == "paper" and split == "id_val" else split

    def load(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Callable | None = None,
        *,
        selection: str = "heldout",
        options: Mapping[str, str] | None = None,
    ) -> LabeledDataset:
        """Split ``split`` read from ``root``, with the selection and options recorded in ``split_info``.

        Args:
            root: the data root (ignored by benchmarks with ``needs_root=False``).
            split: one of :attr:`splits`.
            transform: applied to each PIL image.
            selection: ``"heldout"`` or ``"paper"`` (see the module docstring).
            options: benchmark options (:attr:`options`); missing ones take their defaults.

        Returns:
            A :class:`LabeledDataset` whose ``split_info`` holds ``selection`` (the one used), every option's
            value, ``same_as`` when the split holds another split's data, and ``selection_requested`` /
            ``reason`` when ``"paper"`` fell back to ``"heldout"``.
        """
        self.check_split(split)
        requested = check_selection(selection)
        opts = self.resolve_options(options)
        used = self.selection_used(requested)
        source = self.split_source(split, used, opts)
        ds = self.read_split(root, source, transform, selection=used, options=opts)
        info = ds.split_info
        info["selection"] = used
        if used != requested:
            info["selection_requested"] = requested
            info["reason"] = (
                f"benchmark {self.name!r} has no official selection set; its held-out id_val is used instead"
            )
        if source != split:
            info["same_as"] = source
        info.update(opts)
        return ds

    def read_split(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Callable | None,
        *,
        selection: str,
        options: Mapping[str, str],
    ) -> LabeledDataset:
        """Read ``split`` (already checked); ``selection`` is the one used, ``options`` complete.

        Under ``"paper"`` ``id_train`` is the full official train split; ``id_val`` is only asked for when
        :meth:`split_source` maps it to itself.
        """
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


def load_split(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Callable | None = None,
    *,
    selection: str = "heldout",
    options: Mapping[str, str] | None = None,
) -> LabeledDataset:
    """Load split ``split`` of benchmark ``name`` from ``root``.

    Args:
        name: a registered benchmark (:func:`list_benchmarks`).
        root: the data root.
        split: one of the benchmark's splits (for a root-defined benchmark: of ``bench.for_root(root)``).
        transform: applied to each PIL image.
        selection: ``"heldout"`` (default: a seeded part of train held out as ``id_val``) or ``"paper"``
            (full train, the official selection set as ``id_val``); see the module docstring.
        options: benchmark options, e.g. ``{"fmow_val": "ood"}``; each benchmark declares its own.

    Returns:
        A :class:`LabeledDataset` of ``(image, label)`` with ``.classnames`` (and ``.class_mask`` /
        ``.project_logits`` where the benchmark projects logits) and ``split_info`` recording the selection.
        Unknown names, splits, selections or options raise ``ValueError`` listing the valid ones; a
        missing dataset raises :class:`DatasetNotFoundError` naming the expected layout.
    """
    bench = get_benchmark(name)
    if not bench.root_defined:  # a root-defined benchmark knows its splits once bound to the root (below)
        bench.check_split(split)
    check_selection(selection)
    bench.resolve_options(options)
    if bench.needs_root:
        if root is None:
            raise bench.missing("a --data-root", "none was given")
        if not Path(root).is_dir():
            raise bench.missing(f"data root {root} to be a directory", "it does not exist")
    bench = bench.for_root(root)
    bench.check_split(split)
    return bench.load(root, split, transform, selection=selection, options=options)
