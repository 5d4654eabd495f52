"""Frozen feature extraction: correctness, the on-disk cache, and that LP leaves the backbone untouched."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.features import cache_path, extract_features, resolve_device  # noqa: E402
from lpft.vision.linear_probe import linear_probe  # noqa: E402


class _Images(Dataset):
    """Deterministic random 3x8x8 images whose labels depend on the image (so a probe can learn them)."""

    def __init__(self, n=37, classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % classes
        self.x = torch.randn(n, 3, 8, 8, generator=g) + self.y[:, None, None, None].float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class _TinyCNN(nn.Module):
    """A small BatchNorm CNN that counts its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
        )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _snapshot(m: nn.Module):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid device 'tpu-ish'"):
        resolve_device("tpu-ish")
    with pytest.raises(ValueError, match="must be a string"):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_features_match_a_direct_forward_in_eval_mode():
    ds, net = _Images(), _TinyCNN()
    feats, labels = extract_features(net, ds, batch_size=8, device="cpu", progress=False)  # 37 = 4*8 + 5
    assert feats.dtype == torch.float32 and feats.device.type == "cpu" and feats.shape == (37, 5)
    assert labels.dtype == torch.long and torch.equal(labels, ds.y)
    net.eval()
    with torch.no_grad():
        direct = net(ds.x)
    torch.testing.assert_close(feats, direct)
    assert net.calls == 5 + 1  # five batches, then the direct pass


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_and_backbone_unchanged(training):
    ds, net = _Images(), _TinyCNN()
    net.train(training)
    before = _snapshot(net)
    extract_features(net, ds, batch_size=16, device="cpu", progress=False)
    assert net.training is training
    assert all(m.training is training for m in net.modules())
    after = _snapshot(net)
    assert before.keys() == after.keys()
    for k in before:  # parameters and BatchNorm buffers (running stats, num_batches_tracked)
        assert torch.equal(before[k], after[k]), k


def test_mode_restored_when_the_backbone_fails():
    class Bad(_TinyCNN):
        def forward(self, x):
            return super().forward(x)[:, :, None]  # [B, D, 1]: not a feature matrix

    net = Bad().train()
    with pytest.raises(ValueError, match=r"\[batch, dim\]"):
        extract_features(net, _Images(), device="cpu", progress=False)
    assert net.training


def test_linear_probe_pipeline_leaves_backbone_params_and_bn_buffers_unchanged():
    ds, net = _Images(n=60), _TinyCNN()
    net.train()  # as a caller might leave it: BatchNorm would update its running stats in train mode
    before = _snapshot(net)
    feats, labels = extract_features(net, ds, batch_size=16, device="cpu", progress=False)
    res = linear_probe(feats[:40], labels[:40], feats[40:], labels[40:], [0.1, 1.0], progress=False)
    after = _snapshot(net)
    assert res.weight.shape == (3, 5)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert int(after["net.1.num_batches_tracked"]) == 0  # BatchNorm never ran in train mode
    assert net.training


def test_cache_hit_does_no_forward_pass(tmp_path):
    ds = _Images()
    key = {"backbone": "tiny", "weights_id": "seed0", "benchmark": "fake", "split": "id_train",
           "transform": "ToTensor()", "seed": 0}
    net = _TinyCNN()
    f1, y1 = extract_features(net, ds, batch_size=10, device="cpu", cache_dir=tmp_path, cache_key=key,
                              progress=False)
    assert net.calls == 4
    path = cache_path(tmp_path, key)
    assert path.exists() and path.parent == tmp_path and len(path.stem) == 64
    blob = torch.load(path, weights_only=True)
    assert "tiny" in blob["key"] and torch.equal(blob["features"], f1)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers

    fresh = _TinyCNN()
    f2, y2 = extract_features(fresh, ds, batch_size=10, device="cpu", cache_dir=tmp_path,
                              cache_key=dict(reversed(list(key.items()))), progress=False)  # key order is irrelevant
    assert fresh.calls == 0
    assert torch.equal(f1, f2) and torch.equal(y1, y2)

    other = _TinyCNN()
    extract_features(other, ds, batch_size=10, device="cpu", cache_dir=tmp_path,
                     cache_key={**key, "split": "id_val"}, progress=False)
    assert other.calls == 4  # a different key recomputes
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_corrupt_cache_is_recomputed(tmp_path):
    key = {"backbone": "tiny", "split": "x"}
    path = cache_path(tmp_path, key)
    path.write_bytes(b"not a torch file")
    net = _TinyCNN()
    feats, _ = extract_features(net, _Images(), device="cpu", cache_dir=tmp_path, cache_key=key, progress=False)
    assert net.calls > 0
    assert torch.equal(torch.load(path, weights_only=True)["features"], feats)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"cache_dir": "x"}, "together"),
        ({"cache_key": {"a": 1}}, "together"),
        ({"cache_dir": "x", "cache_key": {}}, "non-empty dict"),
        ({"cache_dir": "x", "cache_key": {"a": {1, 2}}}, "JSON"),
        ({"device": "nonsense"}, "invalid device"),
    ],
)
def test_bad_arguments(kwargs, match, tmp_path):
    if "cache_dir" in kwargs:
        kwargs = {**kwargs, "cache_dir": tmp_path / kwargs["cache_dir"]}
    with pytest.raises(ValueError, match=match):
        extract_features(_TinyCNN(), _Images(), progress=False, **kwargs)
    with pytest.raises(ValueError, match="nn.Module"):
        extract_features(lambda x: x, _Images(), progress=False)


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        extract_features(_TinyCNN(), _Images(n=0), device="cpu", progress=False)


def test_numpy_feature_arrays_are_accepted_downstream():
    feats, labels = extract_features(_TinyCNN(), _Images(n=30), device="cpu", progress=False)
    res = linear_probe(feats.numpy(), labels.numpy(), feats.numpy(), labels.numpy(), [1.0], progress=False)
    assert np.isfinite(res.weight.numpy()).all()
