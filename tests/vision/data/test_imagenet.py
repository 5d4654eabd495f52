"""ImageNet and its five shift sets, loaded from miniature copies in the real layouts."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lpft.vision.data import DatasetNotFoundError, get_benchmark, load_split
from lpft.vision.data import fixtures
from lpft.vision.data.folders import DatasetIncompleteError, load_facts

WNIDS = load_facts("imagenet_wnids")["wnids"]


def test_splits_and_classnames():
    b = get_benchmark("imagenet")
    assert list(b.splits) == ["id_train", "id_val", "id_test", "imagenet_v2", "imagenet_r", "imagenet_a",
                              "imagenet_sketch", "objectnet"]
    assert b.ood_splits == ["imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet"]
    assert b.num_classes == 1000 and b.classnames[0] == "tench"
    assert len(b.templates) == 80 and all("{}" in t for t in b.templates)


@pytest.mark.parametrize("split", ["id_test", "imagenet_sketch"])
def test_wnid_folders_label_is_sorted_wnid_index(imagenet_root, split):
    ds = load_split("imagenet", imagenet_root, split)
    assert len(ds) == 1000
    for path, label in ds.samples[::37]:
        assert WNIDS[label] == Path(path).parent.name
    img, label = ds[5]
    assert img.mode == "RGB" and label == 5
    assert ds.class_mask is None


def test_imagenet_v2_folder_name_is_class_index(imagenet_root):
    ds = load_split("imagenet", imagenet_root, "imagenet_v2")
    assert len(ds) == 1000
    for path, label in ds.samples:
        assert label == int(Path(path).parent.name)
    # an ImageFolder would give folder '10' the position 2 (string sort); we must not
    labels_by_folder = {Path(p).parent.name: y for p, y in ds.samples}
    assert labels_by_folder["10"] == 10 and labels_by_folder["100"] == 100


def test_train_holdout_is_a_seeded_partition(imagenet_root):
    tr = load_split("imagenet", imagenet_root, "id_train")
    va = load_split("imagenet", imagenet_root, "id_val")
    tr_paths, va_paths = {p for p, _ in tr.samples}, {p for p, _ in va.samples}
    assert not tr_paths & va_paths
    assert len(tr_paths | va_paths) == 1000
    assert len(va) == 20  # 2% of 1000
    assert va.split_info["holdout_seed"] == 0 and va.split_info["id_val_size"] == 20
    again = load_split("imagenet", imagenet_root, "id_val")
    assert again.samples == va.samples


@pytest.mark.parametrize("split", ["imagenet_r", "imagenet_a"])
def test_r_and_a_labels_in_1000_space_with_mask(imagenet_root, split):
    facts = load_facts(split)
    ds = load_split("imagenet", imagenet_root, split)
    assert len(ds) == 200
    assert ds.class_mask == facts["imagenet_indices"]
    assert len(ds.classnames) == 1000
    for path, label in ds.samples:
        assert label == WNIDS.index(Path(path).parent.name)
        assert label in ds.class_mask
    logits = torch.randn(4, 1000)
    outside = sorted(set(range(1000)) - set(ds.class_mask))[0]
    logits[:, outside] = 100.0
    proj = ds.project_logits(logits)
    assert proj.shape == (4, 1000)
    assert all(int(i) in ds.class_mask for i in proj.argmax(1))
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[ds.class_mask] = True
    assert torch.equal(proj[:, mask], logits[:, mask])


def test_objectnet_classes_projection_and_border(imagenet_root):
    facts = load_facts("objectnet")
    ds = load_split("imagenet", imagenet_root, "objectnet")
    assert len(ds.classnames) == 113 and len(ds) == 113
    folders = [c["folder"] for c in facts["classes"]]
    assert folders == sorted(folders)
    assert ds.classnames[0] == facts["classes"][0]["objectnet_name"].lower()
    for path, label in ds.samples:
        assert folders[label] == Path(path).parent.name
    assert not any(Path(p).parent.name in fixtures.OBJECTNET_UNMAPPED for p, _ in ds.samples)
    # projection: max over each class's ImageNet logits (loop oracle)
    logits = torch.randn(3, 1000)
    proj = ds.project_logits(logits)
    assert proj.shape == (3, 113)
    for k, c in enumerate(facts["classes"]):
        assert torch.allclose(proj[:, k], logits[:, c["imagenet_indices"]].max(dim=1).values)
    # the 12x12 fixture has a 2-px red frame; the loader cuts it off
    img, _ = ds[0]
    assert img.size == (8, 8)
    arr = np.asarray(img).astype(int)
    assert arr[..., 0].max() < 60 and arr[..., 1].min() > 150


def test_lpft_layout_under_imagenet(tmp_path):
    fixtures.build_imagenet(tmp_path, under_imagenet=True, splits=("imagenet_r", "imagenet_sketch", "objectnet"))
    assert (tmp_path / "imagenet" / "imagenet-r").is_dir() and not (tmp_path / "imagenet-r").exists()
    assert len(load_split("imagenet", tmp_path, "imagenet_r")) == 200
    assert len(load_split("imagenet", tmp_path, "imagenet_sketch")) == 1000
    assert len(load_split("imagenet", tmp_path, "objectnet")) == 113


def test_missing_dataset_error_names_folder_layout_and_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_split("imagenet", tmp_path, "imagenet_a")
    msg = str(e.value)
    assert str(tmp_path / "imagenet-a") in msg and "0 of 7,500 images" in msg
    assert "objectnet-1.0/images/<folder>/" in msg  # the layout
    assert "python -m lpft.vision.data download imagenet" in msg


def test_partial_folder_error_counts(tmp_path):
    fixtures.build_imagenet(tmp_path, splits=("imagenet_r",), per_class=2)
    gone = load_facts("imagenet_r")["wnids"][7]
    shutil.rmtree(tmp_path / "imagenet-r" / gone)
    with pytest.raises(DatasetIncompleteError) as e:
        load_split("imagenet", tmp_path, "imagenet_r")
    msg = str(e.value)
    assert "1 of 200 class folders missing" in msg and gone in msg
    assert "found 398 images" in msg and "30,000" in msg
    assert e.value.found == 398 and e.value.expected == 30000


def test_flat_val_folder_is_explained(tmp_path):
    val = tmp_path / "imagenet" / "val"
    val.mkdir(parents=True)
    for i in range(3):
        (val / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(fixtures.tiny_image_bytes())
    with pytest.raises(DatasetNotFoundError, match="flat"):
        load_split("imagenet", tmp_path, "id_test")


def test_unknown_split_lists_valid_ones(imagenet_root):
    with pytest.raises(ValueError, match="imagenet_sketch"):
        load_split("imagenet", imagenet_root, "imagenet_c")


def test_paper_selection_is_full_train_and_imagenet_val(imagenet_root):
    tr = load_split("imagenet", imagenet_root, "id_train", selection="paper")
    va = load_split("imagenet", imagenet_root, "id_val", selection="paper")
    te = load_split("imagenet", imagenet_root, "id_test")
    assert len(tr) == 1000 and {Path(p).parent.parent.name for p, _ in tr.samples} == {"train"}
    assert va.samples == te.samples and {Path(p).parent.parent.name for p, _ in va.samples} == {"val"}
    assert va.split_info["same_as"] == "id_test" and va.split_info["official_size"] == 50000
    counts = load_facts("imagenet_variants")["imagenet_1k"]["counts"]
    assert tr.split_info["official_size"] == counts["train"]
    # heldout is the old 98/2 split, same seed
    assert len(load_split("imagenet", imagenet_root, "id_train", selection="heldout")) == 980
