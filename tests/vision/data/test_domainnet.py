"""DomainNet (SENTRY 40-class split files) from a miniature copy."""

from pathlib import Path

import pytest

from lpft.vision.data import get_benchmark, load_split
from lpft.vision.data import fixtures
from lpft.vision.data.folders import DatasetIncompleteError, load_facts


def test_benchmark_declaration():
    b = get_benchmark("domainnet")
    assert b.num_classes == 40 and b.classnames[-4:] == ["butterfly", "sheep", "drums", "donut"]
    assert b.ood_splits == ["real", "painting", "clipart"]
    assert b.split_averages == {"ood_avg": ["real", "painting", "clipart"]}


@pytest.mark.parametrize("split,domain,n", [("id_test", "sketch", 40), ("real", "real", 40),
                                            ("painting", "painting", 40), ("clipart", "clipart", 40)])
def test_test_splits(domainnet_root, split, domain, n):
    ds = load_split("domainnet", domainnet_root, split)
    assert len(ds) == n and ds.split_info["domain"] == domain
    classes = load_facts("domainnet")["classnames"]
    for path, label in ds.samples:
        p = Path(path)
        assert p.parent.parent.name == domain and p.parent.name == classes[label]
        assert p.name.startswith(f"{domain}_")
    assert sorted({y for _, y in ds.samples}) == list(range(40))


def test_train_holdout(domainnet_root):
    tr = load_split("domainnet", domainnet_root, "id_train")
    va = load_split("domainnet", domainnet_root, "id_val")
    rows = fixtures.domainnet_rows("sketch", "train", 2)
    assert len(tr) + len(va) == len(rows) == 80 and len(va) == 8
    assert {p for p, _ in tr.samples} | {p for p, _ in va.samples} == {
        str(domainnet_root / "domainnet" / r) for r, _ in rows}
    assert va.split_info["holdout_seed"] == 0 and va.split_info["holdout_of"] == 80


def test_layout_directly_under_root(tmp_path):
    fixtures.build_domainnet(tmp_path, subdir="")
    assert (tmp_path / "SENTRY_splits").is_dir()
    assert len(load_split("domainnet", tmp_path, "real")) == 40


def test_missing_images_are_counted(tmp_path):
    fixtures.build_domainnet(tmp_path)
    (tmp_path / "domainnet" / "painting" / "bee" / "painting_009_000501.jpg").unlink()
    with pytest.raises(DatasetIncompleteError) as e:
        load_split("domainnet", tmp_path, "painting")
    assert "1 missing, found 39 of 40" in str(e.value) and "painting_009_000501.jpg" in str(e.value)
    assert (e.value.found, e.value.expected) == (39, 40)


def test_missing_split_files_error(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_split("domainnet", tmp_path, "real")
    assert "SENTRY_splits" in str(e.value) and "download domainnet" in str(e.value)


def test_bad_lines_name_file_and_line(tmp_path):
    fixtures.build_domainnet(tmp_path)
    f = tmp_path / "domainnet" / "SENTRY_splits" / "clipart_test_mini.txt"
    lines = f.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 5"  # label 5 = bathtub, folder says otherwise
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"clipart_test_mini.txt:3: label 5 is 'bathtub'"):
        load_split("domainnet", tmp_path, "clipart")
    f.write_text("just-a-path\n")
    with pytest.raises(ValueError, match=r":1: expected '<relative path> <label>'"):
        load_split("domainnet", tmp_path, "clipart")


def test_paper_selection_is_full_sketch_train_and_sketch_test(domainnet_root):
    tr = load_split("domainnet", domainnet_root, "id_train", selection="paper")
    va = load_split("domainnet", domainnet_root, "id_val", selection="paper")
    te = load_split("domainnet", domainnet_root, "id_test")
    rows = fixtures.domainnet_rows("sketch", "train", 2)
    assert [p for p, _ in tr.samples] == [str(domainnet_root / "domainnet" / r) for r, _ in rows]
    assert va.samples == te.samples and len(va) == 40
    assert va.split_info["same_as"] == "id_test" and va.split_info["source"].endswith("sketch_test_mini.txt")
    assert tr.split_info["official_size"] == load_facts("domainnet")["split_files"]["sketch_train_mini.txt"]["lines"]
    heldout = load_split("domainnet", domainnet_root, "id_train", selection="heldout")
    assert len(heldout) == 72 and heldout.split_info["selection"] == "heldout"
