"""Benchmarks: the offline ``digits`` default, the ten shift benchmarks of LP-FT (+ ObjectNet), and ``folder``
(the user's own dataset in split/class folders, bound to a data root by ``Benchmark.for_root``).

``load_split(name, root, split, transform=None, *, selection="heldout", options=None)`` is the public loader
(``selection="paper"``: full train split, the official selection set as ``id_val``; ``options``: a
benchmark's declared options, e.g. FMoW's ``{"fmow_val": "id" | "ood"}``); ``list_benchmarks()`` the names.
"""

from lpft.vision.data.base import (
    BENCHMARKS,
    SELECTIONS,
    Benchmark,
    DatasetNotFoundError,
    LabeledDataset,
    get_benchmark,
    list_benchmarks,
    load_split,
    register_benchmark,
)
# Importing each module registers its benchmarks (order = order of `list_benchmarks()`).
from lpft.vision.data import digits, breeds, domainnet, cifar, fmow, imagenet, folder  # noqa: F401,E402

__all__ = [
    "BENCHMARKS",
    "SELECTIONS",
    "Benchmark",
    "DatasetNotFoundError",
    "LabeledDataset",
    "get_benchmark",
    "list_benchmarks",
    "load_split",
    "register_benchmark",
]
