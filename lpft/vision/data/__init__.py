"""Benchmarks: the offline ``digits`` default and the ten shift benchmarks of LP-FT (+ ObjectNet).

``load_split(name, root, split, transform=None)`` is the public loader; ``list_benchmarks()`` the names.
"""

from lpft.vision.data.base import (
    BENCHMARKS,
    Benchmark,
    DatasetNotFoundError,
    LabeledDataset,
    get_benchmark,
    list_benchmarks,
    load_split,
    register_benchmark,
)
from lpft.vision.data import digits  # noqa: F401  (registers "digits")

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DatasetNotFoundError",
    "LabeledDataset",
    "get_benchmark",
    "list_benchmarks",
    "load_split",
    "register_benchmark",
]
