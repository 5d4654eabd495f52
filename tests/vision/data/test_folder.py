"""``folder``: the user's own dataset in split/class folders, bound to its root by ``Benchmark.for_root``."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lpft.vision.data import DatasetNotFoundError, check, get_benchmark, load_split
from lpft.vision.data.__main__ import main
from lpft.vision.data.folder import FOLDER_VAL_FRACTION, display_name
from lpft.vision.data.folders import (HOLDOUT_SEED, CorruptImageError, DatasetIncompleteError, SkippedImage,
                                      holdout_split)
from lpft.vision.data.loader import make_loader

CLASSES = ["blue_circle", "green", "red_square", "yellow"]  # sorted folder names = label order
NAMES = ["blue circle", "green", "red square", "yellow"]


def write_images(folder: Path, n: int, colour: int, fmt: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((8, 8, 3), colour, np.uint8)
        arr[i % 8, :, :] = 255 - colour  # distinct files
        Image.fromarray(arr).save(folder / f"img{i}.{fmt}")


def build(root: Path, *, id_val: bool = False, n_train: int = 10, splits=None) -> Path:
    """4 classes; id_test full; OOD ``sketch`` holds 2 of the 4 classes, ``night`` all of them."""
    splits = splits or {"id_train": (CLASSES, n_train), "id_test": (CLASSES, 3), "sketch": (["green", "yellow"], 4),
                        "night": (CLASSES, 2)}
    if id_val:
        splits = {**splits, "id_val": (CLASSES, 2)}
    for split, (classes, n) in splits.items():
        for c in classes:
            write_images(root / split / c, n, 40 * CLASSES.index(c), "jpg" if split == "sketch" else "png")
    return root


@pytest.fixture
def root(tmp_path):
    return build(tmp_path / "data")


def test_unbound_declaration_and_static_benchmarks():
    b = get_benchmark("folder")
    assert b.root_defined and b.root is None and b.splits == {"id_train": "id", "id_val": "id", "id_test": "id"}
    assert b.templates and all("{}" in t for t in b.templates) and b.needs_root
    digits = get_benchmark("digits")
    assert digits.for_root("/anywhere") is digits and not digits.root_defined  # the default binds nothing
    assert display_name("red_square") == "red square" and display_name("a__b_") == "a b"


def test_for_root_discovers_splits_classes_and_shifts(root):
    (root / ".cache").mkdir()  # hidden folders are no split
    (root / "notes.txt").write_text("not a split")
    b = get_benchmark("folder").for_root(root)
    assert b.splits == {"id_train": "id", "id_val": "id", "id_test": "id", "night": "ood", "sketch": "ood"}
    assert b.eval_splits == ["id_val", "id_test", "night", "sketch"] and b.ood_splits == ["night", "sketch"]
    assert b.classnames == NAMES and b.class_ids == CLASSES and b.num_classes == 4
    assert b.paper_selection is None and not b.has_id_val and b.root == str(root)
    assert b.for_root(root) is b  # already bound to this root
    assert get_benchmark("folder").root is None  # the registered declaration is untouched


def test_heldout_id_val_and_paper_fallback(root):
    n = 4 * 10
    tr = load_split("folder", root, "id_train")
    va = load_split("folder", root, "id_val")
    want_tr, want_va = holdout_split(n, FOLDER_VAL_FRACTION, HOLDOUT_SEED)
    assert (len(tr), len(va)) == (len(want_tr), len(want_va)) == (36, 4)
    assert not {p for p, _ in tr.samples} & {p for p, _ in va.samples}
    assert tr.split_info["holdout_seed"] == HOLDOUT_SEED and tr.split_info["holdout_fraction"] == 0.1
    assert tr.split_info["class_folders"] == CLASSES and va.split_info["val_source"] == "held out from id_train"
    assert va.classnames == NAMES and va.class_mask is None
    paper = load_split("folder", root, "id_val", selection="paper")
    assert [p for p, _ in paper.samples] == [p for p, _ in va.samples]
    info = paper.split_info
    assert info["selection"] == "heldout" and info["selection_requested"] == "paper" and "folder" in info["reason"]
    assert len(load_split("folder", root, "id_train", selection="paper")) == 36


def test_own_id_val_is_read_under_both_selections(tmp_path):
    root = build(tmp_path / "data", id_val=True)
    b = get_benchmark("folder").for_root(root)
    assert b.has_id_val and "id_val" in b.paper_selection
    for selection in ("heldout", "paper"):
        tr = load_split("folder", root, "id_train", selection=selection)
        va = load_split("folder", root, "id_val", selection=selection)
        assert len(tr) == 40 and len(va) == 8 and all("/id_val/" in p for p, _ in va.samples)
        assert va.split_info["selection"] == selection and "same_as" not in va.split_info
        assert va.split_info["val_source"] == tr.split_info["val_source"] == "the dataset's own id_val folder"


def test_items_labels_and_masked_ood(root):
    test = load_split("folder", root, "id_test")
    img, label = test[0]
    assert img.mode == "RGB" and img.size == (8, 8)
    assert sorted(set(test.targets)) == [0, 1, 2, 3] and test.class_mask is None
    assert all(CLASSES[y] in p for p, y in test.samples)
    sketch = get_benchmark("folder").load(root, "sketch")  # load binds an unbound benchmark itself
    assert sketch.class_mask == [1, 3] and sorted(set(sketch.targets)) == [1, 3]
    assert sketch.split_info["missing_classes"] == ["blue_circle", "red_square"]
    assert sketch.split_info["num_classes"] == 2
    logits = torch.randn(500, 4)
    logits[:, 0] += 10  # the head prefers an absent class: the mask must still rule it out
    pred = sketch.project_logits(logits).argmax(1)
    assert set(pred.tolist()) <= {1, 3} and (pred == torch.where(logits[:, 1] > logits[:, 3], 1, 3)).all()
    night = load_split("folder", root, "night")
    assert night.class_mask is None and torch.equal(night.project_logits(logits), logits)


def test_subset_id_test_is_recorded_not_masked(tmp_path):
    root = build(tmp_path / "data", splits={"id_train": (CLASSES, 3), "id_test": (["green"], 2)})
    ds = load_split("folder", root, "id_test")
    assert ds.class_mask is None and ds.split_info["missing_classes"] == ["blue_circle", "red_square", "yellow"]


@pytest.mark.parametrize("case, error, pattern", [
    ("no_id_train", DatasetNotFoundError, r"expected .*id_train \(the training split"),
    ("no_class_folders", DatasetNotFoundError, r"expected one folder per class in .*id_train"),
    ("same_display_name", ValueError, r"class folders \['a b', 'a_b'\] .*same or an empty display name"),
])
def test_bad_roots(tmp_path, case, error, pattern):
    root = tmp_path / "data"
    if case == "no_class_folders":
        write_images(root / "id_train", 2, 0)
    elif case == "same_display_name":
        for c in ("a_b", "a b"):
            write_images(root / "id_train" / c, 1, 0)
    else:
        write_images(root / "id_test" / "x", 1, 0)
    with pytest.raises(error, match=pattern):
        get_benchmark("folder").for_root(root)
    with pytest.raises(error, match=pattern):
        load_split("folder", root, "id_test")
    with pytest.raises(DatasetNotFoundError, match="a --data-root"):
        get_benchmark("folder").for_root(None)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        get_benchmark("folder").for_root(tmp_path / "nowhere")


def _break(root: Path, case: str) -> str:
    """Damage a good layout; returns the path the error must name."""
    if case == "ood_class_not_trained":
        write_images(root / "sketch" / "purple", 1, 0)
        return str(root / "sketch" / "purple")
    if case == "test_class_not_trained":
        write_images(root / "id_test" / "purple", 1, 0)
        return str(root / "id_test" / "purple")
    if case == "empty_class_folder":
        (root / "night" / "orange").mkdir(parents=True)
        for p in (root / "night" / "green").iterdir():
            p.unlink()
        return str(root / "night" / "green")
    if case == "no_images_at_all":
        for c in CLASSES:
            for p in (root / "night" / c).iterdir():
                p.rename(p.with_suffix(".txt"))  # files, but none an image
        return str(root / "night")
    if case == "loose_images":
        write_images(root / "night", 1, 0)
        return str(root / "night" / "img0.png")
    if case == "no_id_test":
        import shutil

        shutil.rmtree(root / "id_test")
        return str(root / "id_test")
    raise AssertionError(case)


@pytest.mark.parametrize("case, split, error", [
    ("ood_class_not_trained", "sketch", ValueError),
    ("test_class_not_trained", "id_test", ValueError),
    ("empty_class_folder", "night", DatasetIncompleteError),
    ("no_images_at_all", "night", DatasetIncompleteError),
    ("loose_images", "night", ValueError),
    ("no_id_test", "id_test", DatasetNotFoundError),
])
def test_bad_layouts_name_the_path(root, case, split, error):
    path = _break(root, case)
    if case == "empty_class_folder":
        (root / "night" / "orange").rmdir()  # an unknown class would be reported first
    with pytest.raises(error) as e:
        load_split("folder", root, split)
    assert path in str(e.value)
    if case == "ood_class_not_trained":
        assert "not training classes" in str(e.value) and "blue_circle" in str(e.value)
    if case == "no_images_at_all":
        assert "none of its 4 class folders holds an image" in str(e.value)
    rows = {r.split: r for r in check.check_root(root, ["folder"])}
    assert rows[split].status in ("error", "incomplete", "missing") and rows["id_train"].status == "found"


def test_unreadable_image_follows_on_corrupt(root):
    bad = root / "night" / "green" / "broken.png"
    bad.write_bytes(b"\x89PNG truncated")
    ds = load_split("folder", root, "night")
    i = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(CorruptImageError, match="broken.png"):
        ds[i]
    loader = make_loader(ds, batch_size=4, shuffle=False, num_workers=0, on_corrupt="skip")
    with pytest.warns(RuntimeWarning, match="skipped 1 corrupt image"):
        n = sum(len(y) for _, y in loader)
    assert n == len(ds) - 1 and loader.skipped_images == [str(bad)]
    ds.on_corrupt = "skip"
    assert isinstance(ds[i], SkippedImage)


def test_check_reports_splits_images_and_classes(root, capsys):
    rows = {r.split: r for r in check.check_root(root, ["folder"])}
    assert list(rows) == ["id_train", "id_val", "id_test", "night", "sketch"]
    assert {r.status for r in rows.values()} == {"found"}
    assert [rows[s].found for s in rows] == [36, 4, 12, 8, 8]
    assert rows["night"].detail == "4 classes"
    assert rows["sketch"].detail == "2 of 4 classes, missing: blue_circle, red_square (masked)"
    assert "folder" not in {r.benchmark for r in check.check_root(root)}  # checked only when named
    assert main(["check", "--root", str(root), "--benchmark", "folder"]) == 0
    out = capsys.readouterr().out
    assert "folder     sketch" in out and "missing: blue_circle, red_square" in out
    assert main(["check", "--root", str(root.parent / "nowhere"), "--benchmark", "folder"]) == 1
    assert "missing" in capsys.readouterr().out


def test_unknown_split_lists_the_discovered_ones(root):
    with pytest.raises(ValueError, match="no split 'snow'; expected one of: id_train, id_val, id_test, night, sketch"):
        load_split("folder", root, "snow")
