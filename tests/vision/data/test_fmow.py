"""FMoW: the wilds-missing error and LP-FT's region/split selection on a fake WILDS metadata table."""

import sys

import pytest

from lpft.vision.data import get_benchmark, load_split
from lpft.vision.data import fmow
from lpft.vision.data.fixtures import FakeWildsFMoW

ROWS = [
    # (wilds split key, region, label)
    ("train", "Americas", 0), ("train", "Americas", 5), ("train", "Africa", 1), ("train", "Europe", 2),
    ("id_val", "Americas", 3), ("id_val", "Asia", 3),
    ("id_test", "Americas", 4),
    ("val", "Americas", 6), ("val", "Americas", 7), ("val", "Africa", 8), ("val", "Europe", 9),
    ("val", "Oceania", 9), ("test", "Africa", 1), ("test", "Americas", 2),
]


def expected(split_key, region):
    return [i for i, (s, r, _) in enumerate(ROWS) if s == split_key and r == region]


@pytest.fixture
def no_wilds(monkeypatch):
    monkeypatch.setitem(sys.modules, "wilds", None)  # makes `import wilds` fail


def test_declaration():
    b = get_benchmark("fmow")
    assert b.num_classes == 62 and b.classnames[0] == "airport"
    assert list(b.splits) == ["id_train", "id_val", "id_test", "africa", "europe"]
    assert fmow.LPFT_REGION_CODES == {"Asia": 0, "Europe": 1, "Africa": 2, "Americas": 3, "Oceania": 4, "Other": 5}


def test_clear_error_without_wilds(tmp_path, no_wilds):
    with pytest.raises(ImportError, match=r"pip install 'lpft\[wilds\]'"):
        load_split("fmow", tmp_path, "id_train")


@pytest.mark.parametrize("use_ood_val", [True, False])
@pytest.mark.parametrize("regions", [("Asia", "Europe", "Africa", "Americas", "Oceania", "Other"),
                                     ("Americas", "Other", "Africa", "Oceania", "Europe", "Asia")])
def test_region_and_split_selection(tmp_path, monkeypatch, use_ood_val, regions):
    fake = FakeWildsFMoW(ROWS, region_names=regions, use_ood_val=use_ood_val)
    monkeypatch.setattr(fmow.FMoWBenchmark, "_open", lambda self, root: fake)
    want = {
        "id_train": expected("train", "Americas"),
        "id_val": expected("id_val", "Americas"),
        "id_test": expected("val", "Americas"),  # LP-FT americas_val: the OOD-period val split
        "africa": expected("val", "Africa"),
        "europe": expected("val", "Europe"),
    }
    for split, idx in want.items():
        ds = load_split("fmow", tmp_path, split)
        assert [i for i, _ in ds.samples] == idx, split
        assert ds.targets == [ROWS[i][2] for i in idx]
        assert ds.split_info["region"] == fmow.SPLITS[split][1]
    img, label = load_split("fmow", tmp_path, "africa")[0]
    assert label == 8 and img.mode == "RGB"


def test_select_indices_without_region_vocabulary_uses_lpft_codes():
    fake = FakeWildsFMoW(ROWS)
    idx = fmow.select_indices(fake.split_array, fake.split_dict, fake.split_names, fake.metadata_array,
                              fake.metadata_fields, None, "africa")
    assert list(idx) == expected("val", "Africa")
    with pytest.raises(ValueError, match="Atlantis"):
        fmow.region_index(["Asia"], "Atlantis")


def test_metadata_missing_but_wilds_present(tmp_path, monkeypatch):
    monkeypatch.setattr(fmow, "import_wilds", lambda: object())
    with pytest.raises(FileNotFoundError, match="fmow_v1.1/rgb_metadata.csv"):
        load_split("fmow", tmp_path, "id_test")


def test_on_disk_fixture_layout(tmp_path):
    import csv

    from lpft.vision.data.fixtures import FMOW_ROWS, build_fmow

    build_fmow(tmp_path)
    base = tmp_path / "fmow_v1.1"
    with open(base / "rgb_metadata.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(FMOW_ROWS) == len(list((base / "images").glob("rgb_img_*.png")))
    assert {r["category"] for r in rows} <= set(get_benchmark("fmow").classnames)
    with open(base / "country_code_mapping.csv") as fh:
        mapping = {r["alpha-3"]: r["region"] for r in csv.DictReader(fh)}
    # order of first appearance of regions (as WILDS derives it) is LP-FT's code order
    seen = []
    for r in rows:
        reg = mapping.get(r["country_code"], "Other")
        if reg not in seen:
            seen.append(reg)
    assert seen == sorted(fmow.LPFT_REGION_CODES, key=fmow.LPFT_REGION_CODES.get)


def test_real_wilds_on_fixture(tmp_path):
    pytest.importorskip("wilds")
    from lpft.vision.data.fixtures import build_fmow

    build_fmow(tmp_path)
    assert len(load_split("fmow", tmp_path, "id_train")) == 2  # USA + BRA train rows before 2013
    assert len(load_split("fmow", tmp_path, "id_test")) == 1  # USA, OOD-period val
    assert len(load_split("fmow", tmp_path, "africa")) == 1
    assert len(load_split("fmow", tmp_path, "europe")) == 1
