"""make_loader, corrupt-image policy, held-out splits and logit projections."""

import warnings

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from lpft.vision.data.fixtures import tiny_image_bytes
from lpft.vision.data.folders import (
    CorruptImageError,
    GroupMaxProjection,
    ImageDataset,
    SkippedImage,
    holdout_split,
)
from lpft.vision.data.loader import ImageLoader, make_loader


def _folder(tmp_path, n_good=6, corrupt=(2,)):
    samples = []
    for i in range(n_good):
        p = tmp_path / f"img_{i}.jpg"
        p.write_bytes(b"not a jpeg at all" if i in corrupt else tiny_image_bytes())
        samples.append((str(p), i % 3))
    return samples


def test_corrupt_image_stops_by_default_naming_the_file(tmp_path):
    ds = ImageDataset(_folder(tmp_path), ["a", "b", "c"], pil_to_tensor)
    assert ds.on_corrupt == "stop"
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(CorruptImageError, match="img_2.jpg"):
        ds[2]
    loader = make_loader(ds, batch_size=4, shuffle=False, num_workers=0)
    with pytest.raises(CorruptImageError, match="img_2.jpg"):
        list(loader)


def test_corrupt_images_skipped_and_counted(tmp_path):
    ds = ImageDataset(_folder(tmp_path, corrupt=(2, 5)), ["a", "b", "c"], pil_to_tensor)
    loader = make_loader(ds, batch_size=4, shuffle=False, num_workers=0, on_corrupt="skip")
    assert isinstance(ds[2], SkippedImage)
    with pytest.warns(RuntimeWarning, match="skipped 2 corrupt image"):
        batches = list(loader)
    assert sum(len(y) for _, y in batches) == 4
    assert [int(v) for v in torch.cat([y for _, y in batches])] == [0, 1, 0, 1]
    assert sorted(p.rsplit("/", 1)[1] for p in loader.skipped_images) == ["img_2.jpg", "img_5.jpg"]


def test_env_variable_chooses_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("LPFT_ON_CORRUPT", "skip")
    assert ImageDataset([], ["a"]).on_corrupt == "skip"
    monkeypatch.setenv("LPFT_ON_CORRUPT", "ignore")
    with pytest.raises(ValueError, match="LPFT_ON_CORRUPT"):
        ImageDataset([], ["a"])


def test_workers_pinned_persistent_and_seeded(tmp_path):
    ds = ImageDataset(_folder(tmp_path, n_good=12, corrupt=(3,)), ["a", "b", "c"], pil_to_tensor)
    loader = make_loader(ds, batch_size=5, shuffle=True, num_workers=2, device="cpu", seed=3, on_corrupt="skip")
    assert isinstance(loader, ImageLoader)
    assert loader.persistent_workers and not loader.pin_memory and loader.num_workers == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = torch.cat([y for _, y in loader])
        b = torch.cat([y for _, y in make_loader(ds, 5, True, 0, seed=3, on_corrupt="skip")])
    assert len(a) == 11 and torch.equal(a, b)  # same seed, same order, with or without workers
    assert len(loader.skipped_images) == 1
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0, False, 0)


def test_pil_batches_without_transform(tmp_path):
    ds = ImageDataset(_folder(tmp_path, corrupt=()), ["a", "b", "c"])
    images, labels = next(iter(make_loader(ds, 3, False, 0)))
    assert isinstance(images, list) and images[0].size == (8, 8) and labels.tolist() == [0, 1, 2]


def test_holdout_split_partition_and_determinism():
    tr, va = holdout_split(1000, 0.1, seed=0)
    assert len(va) == 100 and len(tr) == 900
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(1000))
    tr2, va2 = holdout_split(1000, 0.1, seed=0)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, holdout_split(1000, 0.1, seed=1)[1])
    assert [len(x) for x in holdout_split(3, 0.02)] == [2, 1]  # at least one held out
    with pytest.raises(ValueError):
        holdout_split(10, 1.5)


def test_group_max_projection_matches_loop():
    groups = [[3], [0, 5, 2], [1, 4]]
    proj = GroupMaxProjection(groups)
    logits = torch.randn(7, 6)
    out = proj(logits)
    ref = torch.stack([torch.stack([logits[n, g].max() for g in groups]) for n in range(7)])
    assert torch.equal(out, ref)
    with pytest.raises(ValueError):
        GroupMaxProjection([[1], []])


def test_collate_values_equal_plain_stack():
    from lpft.vision.data.loader import collate_images

    hwc_views = [torch.randint(0, 255, (5, 6, 3), dtype=torch.uint8).permute(2, 0, 1) for _ in range(4)]
    x, y, skipped = collate_images([(t, i) for i, t in enumerate(hwc_views)] + [SkippedImage("gone.jpg")])
    assert x.shape == (4, 3, 5, 6) and torch.equal(x, torch.stack(hwc_views))
    assert y.tolist() == [0, 1, 2, 3] and skipped == ["gone.jpg"]
    chw = [torch.randn(3, 5, 6) for _ in range(2)]
    x, _, _ = collate_images([(t, 0) for t in chw])
    assert x.is_contiguous() and torch.equal(x, torch.stack(chw))
