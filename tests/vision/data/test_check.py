"""``python -m lpft.vision.data check`` on miniature fixtures."""

import shutil

import pytest

from lpft.vision.data import check, fixtures, load_split
from lpft.vision.data.__main__ import main
from lpft.vision.data.folders import load_facts


def _rows(root, *names):
    return {(r.benchmark, r.split): r for r in check.check_root(root, names)}


def test_fixture_counts_against_official(cifar_root):
    rows = _rows(cifar_root, "cifar10", "domainnet")
    r = rows[("cifar10", "stl10")]
    assert (r.status, r.found, r.expected) == ("incomplete", 18, 7200)
    assert rows[("cifar10", "cifar10_1")].expected == 2000
    assert rows[("cifar10", "id_train")].found == 45
    assert all(rows[("domainnet", s)].status == "missing" for s in ("id_train", "real", "clipart"))
    assert "SENTRY_splits" in rows[("domainnet", "real")].detail


def test_found_when_counts_reach_official(domainnet_root, monkeypatch):
    sizes = {"id_train": 72, "id_val": 8, "id_test": 40, "real": 40, "painting": 40, "clipart": 41}
    monkeypatch.setattr(check, "official_counts", lambda name, selection="heldout": sizes)
    rows = _rows(domainnet_root, "domainnet")
    assert [rows[("domainnet", s)].status for s in sizes] == ["found"] * 5 + ["incomplete"]
    assert rows[("domainnet", "clipart")].detail == "-1 images vs official"


def test_partial_and_malformed(tmp_path):
    fixtures.build_imagenet(tmp_path, splits=("imagenet_a", "objectnet"))
    shutil.rmtree(tmp_path / "imagenet-a" / load_facts("imagenet_a")["wnids"][0])
    fixtures.build_domainnet(tmp_path)
    (tmp_path / "domainnet" / "SENTRY_splits" / "real_test_mini.txt").write_text("oops\n")
    rows = _rows(tmp_path, "imagenet", "domainnet")
    a = rows[("imagenet", "imagenet_a")]
    assert (a.status, a.found, a.expected) == ("incomplete", 199, 7500)
    assert "1 of 200 class folders missing" in a.detail
    assert rows[("imagenet", "objectnet")].status == "found" and rows[("imagenet", "objectnet")].found == 113
    assert rows[("imagenet", "imagenet_r")].status == "missing"
    assert rows[("domainnet", "real")].status == "error"
    assert rows[("domainnet", "painting")].status == "incomplete"  # fixture is smaller than official


def test_fmow_without_wilds_is_missing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wilds", None)
    rows = _rows(tmp_path, "fmow")
    assert {r.status for r in rows.values()} == {"missing"}
    assert "wilds" in rows[("fmow", "africa")].detail


def test_cli_report_and_exit_status(cifar_root, capsys):
    assert main(["check", "--root", str(cifar_root), "--benchmark", "cifar10"]) == 1
    out = capsys.readouterr().out
    assert "cifar10    stl10" in out and "incomplete" in out and "7,200" in out
    assert main(["check", "--root", str(cifar_root), "--benchmark", "nope"]) == 1
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["living17", "entity30", "imagenet", "domainnet", "cifar10"])
def test_official_counts_cover_every_split(name):
    from lpft.vision.data import get_benchmark

    counts = check.official_counts(name)
    assert set(counts) == set(get_benchmark(name).splits)


def test_verify_images_names_corrupt_files(tmp_path, capsys):
    fixtures.build_imagenet(tmp_path, splits=("imagenet_a",))
    bad = tmp_path / "imagenet-a" / load_facts("imagenet_a")["wnids"][4] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    rows = _rows(tmp_path, "imagenet")
    assert rows[("imagenet", "imagenet_a")].status == "incomplete"  # counting does not decode
    rows = {(r.benchmark, r.split): r for r in check.check_root(tmp_path, ["imagenet"], verify_images=True)}
    a = rows[("imagenet", "imagenet_a")]
    assert a.status == "corrupt" and a.found == 201 and "1 undecodable image(s)" in a.detail and "broken.jpg" in a.detail
    assert main(["check", "--root", str(tmp_path), "--benchmark", "imagenet", "--verify-images"]) == 1
    assert "corrupt" in capsys.readouterr().out


def test_paper_selection_counts(cifar_root, capsys):
    assert check.official_counts("cifar10", "paper")["id_train"] == 50000
    assert check.official_counts("cifar10", "paper")["id_val"] == 10000
    assert check.official_counts("digits", "paper") == {}
    b = load_facts("breeds")["expected_image_counts"]["living17"]
    assert check.official_counts("living17", "paper")["id_val"] == b["source_val"]
    rows = {r.split: r for r in check.check_root(cifar_root, ["cifar10"], selection="paper")}
    assert (rows["id_train"].found, rows["id_train"].expected) == (50, 50000)
    assert (rows["id_val"].found, rows["id_val"].expected) == (20, 10000)
    assert main(["check", "--root", str(cifar_root), "--benchmark", "cifar10", "--selection", "paper"]) == 1
    out = capsys.readouterr().out
    assert "cifar10    id_train" in out and "50,000" in out


def test_fmow_val_option_reaches_fmow_only(tmp_path, monkeypatch, capsys):
    from lpft.vision.data import fmow

    fake = fixtures.FakeWildsFMoW.from_metadata()
    monkeypatch.setattr(fmow.FMoWBenchmark, "_open", lambda self, root: fake)
    for fmow_val, want in (("id", fixtures.FMOW_ROWS.index(("val", "USA", "Americas", "2012-03-01T00:00:00Z"))),
                           ("ood", fixtures.FMOW_ROWS.index(("val", "USA", "Americas", "2014-03-01T00:00:00Z")))):
        rows = {r.split: r for r in check.check_root(tmp_path, ["fmow"], selection="paper",
                                                     options={"fmow_val": fmow_val})}
        assert {r.status for r in rows.values()} == {"found"}
        assert rows["id_val"].found == rows["id_test"].found == 1 and rows["id_train"].found == 3
        ds = load_split("fmow", tmp_path, "id_test", options={"fmow_val": fmow_val})
        assert [fake.kept[i] for i, _ in ds.samples] == [want]
    with pytest.raises(ValueError, match=r"no checked benchmark has option\(s\) fmow_val \(declared by: fmow\)"):
        check.check_root(tmp_path, ["cifar10"], options={"fmow_val": "id"})
    assert main(["check", "--root", str(tmp_path), "--benchmark", "cifar10", "--fmow-val", "ood"]) == 1
    assert "declared by: fmow" in capsys.readouterr().err
    assert main(["check", "--root", str(tmp_path), "--benchmark", "fmow", "--fmow-val", "ood"]) == 0


def test_list_shows_selection_sets_and_options(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "paper selection set: CIFAR-10 test" in out and "option fmow_val: id | ood (default id)" in out
    assert "paper selection set: none" in out  # digits

