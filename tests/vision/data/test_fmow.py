"""FMoW: the wilds-missing error, the two readings of WILDS 'val' (fmow_val) and both selection sets, on
fake WILDS metadata tables."""

import sys

import pytest

from lpft.vision.data import fmow, get_benchmark, load_split
from lpft.vision.data.fixtures import FMOW_ROWS, FakeWildsFMoW, wilds_fmow_split
from lpft.vision.data.folders import DatasetIncompleteError

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


def _use(monkeypatch, fake):
    monkeypatch.setattr(fmow.FMoWBenchmark, "_open", lambda self, root: fake)


def test_declaration():
    b = get_benchmark("fmow")
    assert b.num_classes == 62 and b.classnames[0] == "airport"
    assert list(b.splits) == ["id_train", "id_val", "id_test", "africa", "europe"]
    assert fmow.LPFT_REGION_CODES == {"Asia": 0, "Europe": 1, "Africa": 2, "Americas": 3, "Oceania": 4, "Other": 5}
    assert b.options == {"fmow_val": ("id", "ood")} and "americas_val" in b.paper_selection


def test_clear_error_without_wilds(tmp_path, no_wilds):
    with pytest.raises(ImportError, match=r"pip install 'lpft\[wilds\]'"):
        load_split("fmow", tmp_path, "id_train")


@pytest.mark.parametrize("use_ood_val", [True, False])
@pytest.mark.parametrize("regions", [("Asia", "Europe", "Africa", "Americas", "Oceania", "Other"),
                                     ("Americas", "Other", "Africa", "Oceania", "Europe", "Asia")])
def test_ood_reading_keeps_the_previous_selection(tmp_path, monkeypatch, use_ood_val, regions):
    """fmow_val='ood', heldout: LP-FT's 'val' read as OOD Val (wilds >= 1.2.1), ID Val Americas as id_val."""
    _use(monkeypatch, FakeWildsFMoW(ROWS, region_names=regions, use_ood_val=use_ood_val))
    want = {
        "id_train": expected("train", "Americas"),
        "id_val": expected("id_val", "Americas"),
        "id_test": expected("val", "Americas"),
        "africa": expected("val", "Africa"),
        "europe": expected("val", "Europe"),
    }
    for split, idx in want.items():
        ds = load_split("fmow", tmp_path, split, options={"fmow_val": "ood"})
        assert [i for i, _ in ds.samples] == idx, split
        assert ds.targets == [ROWS[i][2] for i in idx]
        assert ds.split_info["region"] == fmow.REGIONS[split]
        assert ds.split_info["fmow_val"] == "ood" and ds.split_info["selection"] == "heldout"
    img, label = load_split("fmow", tmp_path, "africa", options={"fmow_val": "ood"})[0]
    assert label == 8 and img.mode == "RGB"


@pytest.mark.parametrize("use_ood_val", [True, False])
def test_id_reading_is_the_default(tmp_path, monkeypatch, use_ood_val):
    """fmow_val='id' (wilds 1.1.0): id_test / africa / europe are ID Val; id_val is carved from train."""
    _use(monkeypatch, FakeWildsFMoW(ROWS, use_ood_val=use_ood_val))
    te = load_split("fmow", tmp_path, "id_test")
    assert [i for i, _ in te.samples] == expected("id_val", "Americas")
    assert te.split_info["fmow_val"] == "id" and te.split_info["wilds_split"] == "ID Val"
    with pytest.raises(DatasetIncompleteError, match="'ID Val' in region Africa"):
        load_split("fmow", tmp_path, "africa")  # ROWS has no ID-val row in Africa
    tr, va = load_split("fmow", tmp_path, "id_train"), load_split("fmow", tmp_path, "id_val")
    assert sorted(i for i, _ in tr.samples + va.samples) == expected("train", "Americas")
    assert (len(tr), len(va)) == (1, 1) and va.split_info["holdout_seed"] == 0


def _years_and_splits(fake, ds):
    """(calendar years, WILDS display names) of a split's rows, read off the fake's metadata table."""
    year_col = fake.metadata_fields.index("year")
    names = {v: fake.split_names[k] for k, v in fake.split_dict.items()}
    idx = [i for i, _ in ds.samples]
    return {2002 + int(fake.metadata_array[i, year_col]) for i in idx}, {names[int(fake.split_array[i])] for i in idx}


def test_fake_applies_the_wilds_time_split():
    assert [wilds_fmow_split(s, y) for s, y in [("train", 2012), ("val", 2012), ("val", 2013), ("val", 2015),
                                                ("test", 2011), ("test", 2016), ("seq", 2016)]] == \
        ["train", "id_val", "val", "val", "id_test", "test", None]
    fake = FakeWildsFMoW.from_metadata()
    assert len(fake.kept) == len(FMOW_ROWS) - 1 and FMOW_ROWS[13][0] == "seq" and 13 not in fake.kept


@pytest.mark.parametrize("fmow_val", ["id", "ood"])
@pytest.mark.parametrize("selection", ["heldout", "paper"])
def test_readings_pick_rows_by_year_and_split(tmp_path, monkeypatch, fmow_val, selection):
    """On the miniature's metadata (WILDS' time split applied), each reading picks the right rows."""
    fake = FakeWildsFMoW.from_metadata()
    _use(monkeypatch, fake)
    eval_years = set(range(2002, 2013) if fmow_val == "id" else range(2013, 2016))
    eval_display = "ID Val" if fmow_val == "id" else "OOD Val"
    got = {s: load_split("fmow", tmp_path, s, selection=selection, options={"fmow_val": fmow_val})
           for s in get_benchmark("fmow").splits}
    for split in ("id_test", "africa", "europe"):
        years, displays = _years_and_splits(fake, got[split])
        assert years <= eval_years and displays == {eval_display}, split
        rows = [FMOW_ROWS[fake.kept[i]] for i, _ in got[split].samples]
        assert {r[2] for r in rows} == {fmow.REGIONS[split]} and {r[0] for r in rows} == {"val"}
    train_rows = [i for i, r in enumerate(FMOW_ROWS) if r[0] == "train" and r[2] == "Americas"]
    tr, va = got["id_train"], got["id_val"]
    years, displays = _years_and_splits(fake, tr)
    assert displays == {"Train"} and max(years) < 2013
    if selection == "paper":
        assert sorted(fake.kept[i] for i, _ in tr.samples) == train_rows  # full train, Americas
        assert va.samples == got["id_test"].samples and va.split_info["same_as"] == "id_test"
        assert "same_as" not in got["id_test"].split_info
    elif fmow_val == "id":
        assert sorted(fake.kept[i] for i, _ in tr.samples + va.samples) == train_rows
        assert not {i for i, _ in tr.samples} & {i for i, _ in va.samples}
        assert _years_and_splits(fake, va)[1] == {"Train"} and "same_as" not in va.split_info
    else:
        assert sorted(fake.kept[i] for i, _ in tr.samples) == train_rows
        years, displays = _years_and_splits(fake, va)
        assert displays == {"ID Val"} and max(years) < 2013
        assert {FMOW_ROWS[fake.kept[i]][2] for i, _ in va.samples} == {"Americas"}
    for ds in got.values():
        assert ds.split_info["selection"] == selection and ds.split_info["fmow_val"] == fmow_val


def test_options_are_validated(tmp_path, monkeypatch):
    _use(monkeypatch, FakeWildsFMoW(ROWS))
    with pytest.raises(ValueError, match=r"option 'fmow_val' must be one of 'id', 'ood'; got 'val'"):
        load_split("fmow", tmp_path, "id_test", options={"fmow_val": "val"})
    with pytest.raises(ValueError, match=r"no option 'wilds_version'; valid options: fmow_val \(id\|ood\)"):
        get_benchmark("fmow").load(tmp_path, "id_test", options={"wilds_version": "1.1"})


def test_select_indices_without_region_vocabulary_uses_lpft_codes():
    fake = FakeWildsFMoW(ROWS)
    args = (fake.split_array, fake.split_dict, fake.split_names, fake.metadata_array, fake.metadata_fields, None)
    assert list(fmow.select_indices(*args, "OOD Val", "Africa")) == expected("val", "Africa")
    assert list(fmow.select_indices(*args, "ID Val", "Americas")) == expected("id_val", "Americas")
    with pytest.raises(ValueError, match="Atlantis"):
        fmow.region_index(["Asia"], "Atlantis")
    with pytest.raises(ValueError, match="no unique split named 'Val'"):
        fmow.select_indices(*args, "Val", "Africa")


def test_metadata_missing_but_wilds_present(tmp_path, monkeypatch):
    monkeypatch.setattr(fmow, "import_wilds", lambda: object())
    with pytest.raises(FileNotFoundError, match="fmow_v1.1/rgb_metadata.csv"):
        load_split("fmow", tmp_path, "id_test")


def test_on_disk_fixture_layout(tmp_path):
    import csv

    from lpft.vision.data.fixtures import build_fmow

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
    # Americas train rows before 2013: USA, BRA, MEX
    assert len(load_split("fmow", tmp_path, "id_train", selection="paper")) == 3
    for fmow_val in ("id", "ood"):  # one Americas / Africa / Europe val row in each period
        for split in ("id_test", "africa", "europe"):
            ds = load_split("fmow", tmp_path, split, options={"fmow_val": fmow_val})
            years, _ = _years_and_splits(fmow.open_wilds(tmp_path), ds)
            assert len(ds) == 1 and (max(years) < 2013) == (fmow_val == "id")
