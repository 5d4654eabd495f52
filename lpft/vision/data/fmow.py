"""FMoW-WILDS with LP-FT's geographic shift (Kumar et al. 2022): train in the Americas, test in Africa/Europe.

Needs the optional ``wilds`` package (``pip install 'lpft[wilds]'``). Splits, all restricted by region
(WILDS region metadata; LP-FT codes Asia 0, Europe 1, Africa 2, Americas 3, Oceania 4, Other 5):

* ``id_train``: WILDS ``train`` (images before 2013), Americas;
* ``id_val``: WILDS ``ID Val`` (same period as train, held out by WILDS), Americas;
* ``id_test``: WILDS ``OOD Val`` (2013-2015), Americas -- LP-FT's ``americas_val``;
* ``africa``: WILDS ``OOD Val``, Africa -- LP-FT's OOD metric ``africa_val``;
* ``europe``: WILDS ``OOD Val``, Europe -- LP-FT's ``europe_val``.

WILDS 2.0 renames its splits unless ``use_ood_val=True``; splits are therefore chosen by their display
names ("Train", "ID Val", "OOD Val"), and regions by name through the dataset's region vocabulary.
Layout: ``fmow_v1.1/{rgb_metadata.csv,country_code_mapping.csv,images/rgb_img_<i>.png}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lpft.vision.data.base import Benchmark, register_benchmark
from lpft.vision.data.folders import ImageDataset, load_facts

#: our split -> (WILDS split display name, region name)
SPLITS: dict[str, tuple[str, str]] = {
    "id_train": ("Train", "Americas"),
    "id_val": ("ID Val", "Americas"),
    "id_test": ("OOD Val", "Americas"),
    "africa": ("OOD Val", "Africa"),
    "europe": ("OOD Val", "Europe"),
}
LPFT_REGION_CODES = dict(load_facts("fmow")["metadata"]["region_index"])
FMOW_DIR = "fmow_v1.1"

LAYOUT = """\
  fmow_v1.1/rgb_metadata.csv
  fmow_v1.1/country_code_mapping.csv
  fmow_v1.1/images/rgb_img_<index>.png   (224x224 RGB)"""


class WildsMissingError(ImportError):
    """The optional ``wilds`` package is not installed."""


def import_wilds():
    """Import ``wilds`` or raise :class:`WildsMissingError` saying how to install it."""
    try:
        import wilds  # noqa: F401
    except ImportError as e:
        raise WildsMissingError(
            "the fmow benchmark needs the optional 'wilds' package (FMoW-WILDS): pip install 'lpft[wilds]' "
            f"(or pip install wilds); import failed: {e}"
        ) from e
    return wilds


_OPENED: dict[str, object] = {}


def open_wilds(root, download: bool = False):
    """The WILDS FMoW dataset under ``root`` (``root/fmow_v1.1``), with OOD-val split names kept.

    Opened once per process and root (WILDS parses the whole metadata table on every open).
    """
    key = str(Path(root).resolve())
    if key in _OPENED and not download:
        return _OPENED[key]
    ds = _open_wilds(root, download)
    _OPENED[key] = ds
    return ds


def _open_wilds(root, download: bool):
    wilds = import_wilds()
    try:
        return wilds.get_dataset(dataset="fmow", root_dir=str(root), download=download, use_ood_val=True)
    except TypeError:  # wilds < 2.0 has no use_ood_val and keeps the names
        return wilds.get_dataset(dataset="fmow", root_dir=str(root), download=download)


def region_index(region_names: Sequence[str] | None, region: str) -> int:
    """Index of ``region`` in the dataset's region vocabulary (LP-FT's codes when it has none)."""
    if region_names is None:
        return LPFT_REGION_CODES[region]
    names = list(region_names)
    if region not in names:
        raise ValueError(f"FMoW region {region!r} not in the dataset's regions {names}")
    return names.index(region)


def select_indices(
    split_array: np.ndarray,
    split_dict: dict[str, int],
    split_names: dict[str, str],
    metadata_array: np.ndarray,
    metadata_fields: Sequence[str],
    region_names: Sequence[str] | None,
    split: str,
) -> np.ndarray:
    """Row indices of our ``split``: WILDS split by display name, then region by name.

    Args:
        split_array: WILDS split id per row.
        split_dict: WILDS split key -> id.
        split_names: WILDS split key -> display name ("Train", "ID Val", "OOD Val", ...).
        metadata_array: (N, F) metadata; the ``region`` column is used.
        metadata_fields: names of the metadata columns.
        region_names: the dataset's region vocabulary (``_metadata_map['region']``), or ``None``.
        split: one of :data:`SPLITS`.
    """
    display, region = SPLITS[split]
    keys = [k for k, v in split_names.items() if v == display]
    if len(keys) != 1:
        raise ValueError(f"WILDS FMoW has no unique split named {display!r}: {split_names}")
    sid = split_dict[keys[0]]
    col = list(metadata_fields).index("region")
    rid = region_index(region_names, region)
    split_array = np.asarray(split_array)
    regions = np.asarray(metadata_array)[:, col]
    return np.flatnonzero((split_array == sid) & (regions == rid))


class _WildsImages:
    """``index -> PIL image`` through the WILDS dataset object (pickled with it into workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, i: int):
        return self.dataset.get_input(int(i)).convert("RGB")


class FMoWBenchmark(Benchmark):
    """FMoW-WILDS, Americas -> Africa/Europe; see the module docstring."""

    def _open(self, root):
        if not (Path(root) / FMOW_DIR / "rgb_metadata.csv").is_file():
            # check the wilds import first: it is the more basic problem
            import_wilds()
            raise self.missing(f"{Path(root) / FMOW_DIR / 'rgb_metadata.csv'}", "not found")
        return open_wilds(root)

    def load(self, root, split, transform=None):
        self.check_split(split)
        ds = self._open(root)
        meta_map = getattr(ds, "_metadata_map", None) or {}
        idx = select_indices(
            np.asarray(ds.split_array),
            ds.split_dict,
            ds.split_names,
            np.asarray(ds.metadata_array),
            ds.metadata_fields,
            meta_map.get("region"),
            split,
        )
        y = np.asarray(ds.y_array)
        samples = [(int(i), int(y[i])) for i in idx]
        display, region = SPLITS[split]
        info = {"source": str(Path(root) / FMOW_DIR), "wilds_split": display, "region": region, "official_size": None}
        return ImageDataset(samples, self.classnames, transform, split_info=info, loader=_WildsImages(ds))


FMOW = register_benchmark(
    FMoWBenchmark(
        name="fmow",
        classnames=list(load_facts("fmow")["classnames"]),
        splits={"id_train": "id", "id_val": "id", "id_test": "id", "africa": "ood", "europe": "ood"},
        layout=LAYOUT,
        how_to_get="pip install 'lpft[wilds]' && python -m lpft.vision.data download fmow --root DIR  (~54 GB)",
    )
)
