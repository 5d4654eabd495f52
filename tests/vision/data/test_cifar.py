"""CIFAR-10 -> STL-10 / CIFAR-10.1 from miniature files in the official formats."""

import numpy as np
import pytest

from lpft.vision.data import get_benchmark, load_split
from lpft.vision.data import fixtures
from lpft.vision.data.folders import DatasetIncompleteError


def _pixel_label(img):
    arr = np.asarray(img)
    # fixture: white top row, red channel = 25 * label below it
    assert (arr[0] == 255).all(), "top row must be white (image orientation)"
    return int(arr[1:, :, 0].mean()) // 25


def test_declaration():
    b = get_benchmark("cifar10")
    assert list(b.splits) == ["id_train", "id_val", "id_test", "stl10", "cifar10_1"]
    assert b.classnames[1] == "automobile" and b.num_classes == 10


@pytest.mark.parametrize("split,n", [("id_test", 20), ("cifar10_1", 20)])
def test_labels_match_pixels(cifar_root, split, n):
    ds = load_split("cifar10", cifar_root, split)
    assert len(ds) == n
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.size == (32, 32) and _pixel_label(img) == label
    assert sorted(set(ds.targets)) == list(range(10))


def test_train_holdout(cifar_root):
    tr = load_split("cifar10", cifar_root, "id_train")
    va = load_split("cifar10", cifar_root, "id_val")
    assert len(tr) == 45 and len(va) == 5
    assert not {i for i, _ in tr.samples} & {i for i, _ in va.samples}
    for ds in (tr, va):
        for i in range(len(ds)):
            img, label = ds[i]
            assert _pixel_label(img) == label
    assert va.split_info["holdout_seed"] == 0 and va.split_info["official_size"] == 5000


def test_stl_mapped_into_cifar_space(cifar_root):
    ds = load_split("cifar10", cifar_root, "stl10")
    table = [0, 2, 1, 3, 4, 5, 7, -1, 8, 9]
    assert len(ds) == 18 and ds.split_info["dropped_monkey"] == 2
    assert len(ds.classnames) == 10  # 10-way head
    seen = set()
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.size == (96, 96)
        stl_label = _pixel_label(img)  # the fixture encodes the original STL label
        assert stl_label != 7 and label == table[stl_label]
        seen.add(label)
    assert 6 not in seen  # CIFAR frog has no STL counterpart
    assert seen == set(range(10)) - {6}


def test_missing_batch_and_files(tmp_path):
    fixtures.build_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetIncompleteError, match="missing data_batch_3"):
        load_split("cifar10", tmp_path, "id_train")
    assert len(load_split("cifar10", tmp_path, "id_test")) == 20
    with pytest.raises(FileNotFoundError, match="CIFAR-10.1"):
        load_split("cifar10", tmp_path / "cifar-10-batches-py", "cifar10_1")


def test_truncated_stl_is_reported(tmp_path):
    fixtures.build_cifar(tmp_path)
    x = tmp_path / "stl10_binary" / "test_X.bin"
    x.write_bytes(x.read_bytes()[: 3 * 96 * 96 * 5])
    with pytest.raises(DatasetIncompleteError, match="test_X.bin holds 5.00 images but test_y.bin 20 labels"):
        load_split("cifar10", tmp_path, "stl10")


def test_paper_selection_is_full_train_and_the_test_set(cifar_root):
    tr = load_split("cifar10", cifar_root, "id_train", selection="paper")
    va = load_split("cifar10", cifar_root, "id_val", selection="paper")
    te = load_split("cifar10", cifar_root, "id_test", selection="paper")
    assert len(tr) == 50 and [i for i, _ in tr.samples] == list(range(50))  # all 5 train batches
    assert va.samples == te.samples and len(va) == 20
    for i in range(len(va)):
        img, label = va[i]
        assert _pixel_label(img) == label
    assert va.split_info["same_as"] == "id_test" and va.split_info["official_size"] == 10000
    assert tr.split_info["official_size"] == 50000 and tr.split_info["selection"] == "paper"
    assert load_split("cifar10", cifar_root, "stl10", selection="paper").split_info["selection"] == "paper"
    assert "test_acc/cifar10-test" in get_benchmark("cifar10").paper_selection
