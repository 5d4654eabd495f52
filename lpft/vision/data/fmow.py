"""FMoW-WILDS with LP-FT's geographic shift (Kumar et al. 2022): train in the Americas, test in Africa/Europe.

Needs the optional ``wilds`` package (``pip install 'lpft[wilds]'``). Regions follow the WILDS region
metadata (LP-FT codes Asia 0, Europe 1, Africa 2, Americas 3, Oceania 4, Other 5).

LP-FT trains on WILDS ``train`` in the Americas and evaluates WILDS split ``'val'`` per region
(``americas_val`` = ID and its selection set, ``africa_val`` = OOD, ``europe_val``; transfer_learning
``configs/adaptation/datasets_fmow.yaml:29-47``). What ``'val'`` means depends on the wilds version, which
LP-FT does not pin: in wilds 1.1.0 ``use_ood_val`` defaults to ``False`` and ``'val'`` is **ID Val**
(images before 2013, like train); from wilds 1.2.1 on it defaults to ``True`` and ``'val'`` is **OOD Val**
(2013-2015). LP-FT's sibling config ``datasets_fmow_all.yaml`` (commit 658f059, September 2021) uses the
1.1.0 names ``'val'`` (as id_val) and ``'ood_val'``, so the evidence favours ID Val, but it is not settled. The reading
is therefore an option, ``options={"fmow_val": "id" | "ood"}`` (default ``"id"``), recorded in
``split_info``:

================  ==============================================  ==============================
split             ``fmow_val="id"`` (wilds 1.1.0 reading)         ``fmow_val="ood"`` (>= 1.2.1)
================  ==============================================  ==============================
``id_train``      ``Train``, Americas (heldout: 90% of it)        ``Train``, Americas
``id_val``        heldout: 10% of ``Train`` Americas (seed 0)     heldout: ``ID Val``, Americas
``id_test``       ``ID Val``, Americas                            ``OOD Val``, Americas
``africa``        ``ID Val``, Africa                              ``OOD Val``, Africa
``europe``        ``ID Val``, Europe                              ``OOD Val``, Europe
================  ==============================================  ==============================

With ``selection="paper"`` ``id_train`` is all of ``Train`` Americas and ``id_val`` is ``id_test``
(``americas_val``, LP-FT's ``val_metric``) under either reading.

WILDS splits are chosen by their display names ("Train", "ID Val", "OOD Val"), which are the same in every
wilds version whatever the split keys are, and regions by name through the dataset's region vocabulary.
Layout: ``fmow_v1.1/{rgb_metadata.csv,country_code_mapping.csv,images/rgb_img_<i>.png}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lpft.vision.data.base import Benchmark, register_benchmark
from lpft.vision.data.folders import ImageDataset, incomplete, load_facts, select_train

#: our split -> region name
REGIONS: dict[str, str] = {
    "id_train": "Americas",
    "id_val": "Americas",
    "id_test": "Americas",
    "africa": "Africa",
    "europe": "Europe",
}
#: values of the ``fmow_val`` option (the first is the default) -> WILDS display name LP-FT's ``'val'`` has
FMOW_VAL_READINGS: dict[str, str] = {"id": "ID Val", "ood": "OOD Val"}
#: years of each WILDS split (official time split scheme)
WILDS_YEARS = {"Train": "2002-2012", "ID Val": "2002-2012", "OOD Val": "2013-2015"}
#: fraction of ``Train`` Americas held out as ``id_val`` (``fmow_val="id"``, ``selection="heldout"``)
FMOW_VAL_FRACTION = 0.1
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
    # use_ood_val only renames split keys (wilds 1.1.0 defaults it to False, where key 'val' is "ID Val";
    # 1.2.1+ to True, where 'val' is "OOD Val"). Rows are selected by display name, so the keys do not
    # matter here; a release without the keyword raises TypeError and is opened without it.
    try:
        return wilds.get_dataset(dataset="fmow", root_dir=str(root), download=download, use_ood_val=True)
    except TypeError:
        return wilds.get_dataset(dataset="fmow", root_dir=str(root), download=download)


def region_index(region_names: Sequence[str] | None, region: str) -> int:
    """Index of ``region`` in the dataset's region vocabulary (LP-FT's codes when it has none)."""
    if region_names is None:
        return LPFT_REGION_CODES[region]
    names = list(region_names)
    if region not in names:
        raise ValueError(f"FMoW region {region!r} not in the dataset's regions {names}")
    return names.index(region)


def wilds_split(split: str, fmow_val: str, selection: str) -> str:
    """Display name of the WILDS split whose rows (in the split's region) make up our ``split``.

    ``id_train`` and, for ``fmow_val="id"`` under ``"heldout"``, ``id_val`` come from "Train" (the
    hold-out is applied afterwards). ``id_val`` under ``"paper"`` is ``id_test`` (see ``split_source``).
    """
    if fmow_val not in FMOW_VAL_READINGS:
        raise ValueError(f"fmow_val must be one of {', '.join(map(repr, FMOW_VAL_READINGS))}; got {fmow_val!r}")
    if split == "id_train" or (split == "id_val" and fmow_val == "id"):
        return "Train"
    if split == "id_val":
        return "ID Val"
    if split not in REGIONS:
        raise ValueError(f"FMoW has no split {split!r}; expected one of: {', '.join(REGIONS)}")
    return FMOW_VAL_READINGS[fmow_val]


def select_indices(
    split_array: np.ndarray,
    split_dict: dict[str, int],
    split_names: dict[str, str],
    metadata_array: np.ndarray,
    metadata_fields: Sequence[str],
    region_names: Sequence[str] | None,
    display: str,
    region: str,
) -> np.ndarray:
    """Row indices of WILDS split ``display`` (by display name) in ``region`` (by name).

    Args:
        split_array: WILDS split id per row.
        split_dict: WILDS split key -> id.
        split_names: WILDS split key -> display name ("Train", "ID Val", "OOD Val", ...).
        metadata_array: (N, F) metadata; the ``region`` column is used.
        metadata_fields: names of the metadata columns.
        region_names: the dataset's region vocabulary (``_metadata_map['region']``), or ``None``.
        display: the WILDS split's display name.
        region: the region name.
    """
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

    def read_split(self, root, split, transform, *, selection, options):
        fmow_val = options["fmow_val"]
        display, region = wilds_split(split, fmow_val, selection), REGIONS[split]
        ds = self._open(root)
        meta_map = getattr(ds, "_metadata_map", None) or {}
        idx = select_indices(
            np.asarray(ds.split_array),
            ds.split_dict,
            ds.split_names,
            np.asarray(ds.metadata_array),
            ds.metadata_fields,
            meta_map.get("region"),
            display,
            region,
        )
        if len(idx) == 0:
            raise incomplete(self, f"images of WILDS split {display!r} in region {region} for {split!r}",
                             "none found in the metadata", found=0)
        y = np.asarray(ds.y_array)
        samples = [(int(i), int(y[i])) for i in idx]
        info = {
            "source": str(Path(root) / FMOW_DIR),
            "wilds_split": display,
            "wilds_years": WILDS_YEARS[display],
            "region": region,
            "official_size": None,
        }
        if display == "Train" and selection == "heldout" and fmow_val == "id":
            # ID Val is id_test under this reading, so the selection set is carved from train
            samples, hold = select_train(samples, split, selection, FMOW_VAL_FRACTION)
            info.update(hold)
        elif split == "id_train":
            info.update(train_split="full", holdout_fraction=None)
        return ImageDataset(samples, self.classnames, transform, split_info=info, loader=_WildsImages(ds))


FMOW = register_benchmark(
    FMoWBenchmark(
        name="fmow",
        classnames=list(load_facts("fmow")["classnames"]),
        splits={"id_train": "id", "id_val": "id", "id_test": "id", "africa": "ood", "europe": "ood"},
        layout=LAYOUT,
        how_to_get="pip install 'lpft[wilds]' && python -m lpft.vision.data download fmow --root DIR  (~54 GB)",
        paper_selection=(
            "FMoW americas_val: WILDS 'val' in the Americas (= id_test; official val_metric); ID Val 2002-2012 "
            "with fmow_val='id', OOD Val 2013-2015 with fmow_val='ood'"
        ),
        options={"fmow_val": tuple(FMOW_VAL_READINGS)},
    )
)
