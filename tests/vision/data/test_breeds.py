"""BREEDS Living-17 / Entity-30 over a partial ImageNet holding only their subclass folders."""

import shutil
from pathlib import Path

import pytest

from lpft.vision.data import get_benchmark, load_split
from lpft.vision.data import fixtures
from lpft.vision.data.folders import DatasetIncompleteError, load_facts


@pytest.mark.parametrize("name,n_classes,per_domain", [("living17", 17, 2), ("entity30", 30, 4)])
def test_facts_shape(name, n_classes, per_domain):
    classes = load_facts("breeds")[name]["classes"]
    assert [c["label"] for c in classes] == list(range(n_classes))
    wnids = load_facts("imagenet_wnids")["wnids"]
    seen = set()
    for c in classes:
        assert len(c["source_wnids"]) == len(c["target_wnids"]) == per_domain
        assert not set(c["source_wnids"]) & set(c["target_wnids"])
        assert [wnids.index(w) for w in c["source_wnids"]] == c["source_imagenet_indices"]
        assert not seen & set(c["source_wnids"] + c["target_wnids"])  # no subclass in two superclasses
        seen |= set(c["source_wnids"] + c["target_wnids"])
    assert get_benchmark(name).classnames == [c["superclass_name"] for c in classes]


@pytest.mark.parametrize("name", ["living17", "entity30"])
def test_splits_membership_and_labels(tmp_path, name):
    fixtures.build_breeds(tmp_path, name, train_per_subclass=3, val_per_subclass=2)
    classes = load_facts("breeds")[name]["classes"]
    src = {w: c["label"] for c in classes for w in c["source_wnids"]}
    tgt = {w: c["label"] for c in classes for w in c["target_wnids"]}
    n_sub = len(src)

    tr = load_split(name, tmp_path, "id_train")
    va = load_split(name, tmp_path, "id_val")
    assert len(tr) + len(va) == 3 * n_sub
    assert len(va) == round(0.1 * 3 * n_sub)
    assert not {p for p, _ in tr.samples} & {p for p, _ in va.samples}
    for ds, table, part in ((tr, src, "train"), (va, src, "train")):
        for path, label in ds.samples:
            assert Path(path).parent.parent.name == part
            assert table[Path(path).parent.name] == label

    te = load_split(name, tmp_path, "id_test")
    ood = load_split(name, tmp_path, "ood_test")
    assert len(te) == len(ood) == 2 * n_sub
    for path, label in te.samples:
        assert Path(path).parent.parent.name == "val" and src[Path(path).parent.name] == label
    for path, label in ood.samples:
        assert Path(path).parent.parent.name == "val" and tgt[Path(path).parent.name] == label
    assert te.split_info["subclasses"] == "source" and ood.split_info["subclasses"] == "target"
    assert tr.split_info["holdout_seed"] == 0
    img, _ = te[0]
    assert img.size == (8, 8)


def test_missing_subclass_folder_is_named(tmp_path):
    fixtures.build_breeds(tmp_path, "living17")
    gone = load_facts("breeds")["living17"]["classes"][3]["target_wnids"][1]
    shutil.rmtree(tmp_path / "imagenet" / "val" / gone)
    assert len(load_split("living17", tmp_path, "id_test")) == 34  # source folders intact
    with pytest.raises(DatasetIncompleteError, match=gone):
        load_split("living17", tmp_path, "ood_test")


@pytest.mark.parametrize("name", ["living17", "entity30"])
def test_paper_selection_trains_on_all_source_images_and_selects_on_source_val(tmp_path, name):
    fixtures.build_breeds(tmp_path, name, train_per_subclass=3, val_per_subclass=2)
    n_sub = sum(len(c["source_wnids"]) for c in load_facts("breeds")[name]["classes"])
    tr = load_split(name, tmp_path, "id_train", selection="paper")
    va = load_split(name, tmp_path, "id_val", selection="paper")
    te = load_split(name, tmp_path, "id_test", selection="paper")
    assert len(tr) == 3 * n_sub  # every source-subclass train image: no hold-out
    held = load_split(name, tmp_path, "id_train").samples + load_split(name, tmp_path, "id_val").samples
    assert sorted(tr.samples) == sorted(held)
    assert va.samples == te.samples and len(va) == 2 * n_sub
    assert all(Path(p).parent.parent.name == "val" for p, _ in va.samples)
    assert va.split_info["same_as"] == "id_test" and va.split_info["selection"] == "paper"
    assert tr.split_info["train_split"] == "full" and "holdout_seed" not in tr.split_info
    counts = load_facts("breeds")["expected_image_counts"][name]
    assert tr.split_info["official_size"] == counts["source_train"]
    assert va.split_info["official_size"] == counts["source_val"]
    assert "source val" in get_benchmark(name).paper_selection
