"""lpft.vision.distortion.measure_distortion: exact values on small modules, eval mode, no grad."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lpft.vision.distortion import measure_distortion


class TinyBackbone(nn.Module):
    """Conv + BatchNorm + Dropout -> pooled 6-d features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x))).mean(dim=(2, 3))


def _data(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.zeros(n, dtype=torch.long))


def _features(model, ds):
    model.eval()
    with torch.no_grad():
        return model(ds.tensors[0]).double().numpy()


def test_identical_backbones_have_no_distortion():
    torch.manual_seed(0)
    b = TinyBackbone()
    d = measure_distortion(b, copy.deepcopy(b), _data(), batch_size=8)
    assert d["feature_sq_change"] == pytest.approx(0.0, abs=1e-12)
    assert d["feature_l2_change"] == pytest.approx(0.0, abs=1e-6)
    assert d["feature_cosine"] == pytest.approx(1.0)
    assert d["num_images"] == 37


def test_matches_numpy_oracle_in_eval_mode():
    torch.manual_seed(1)
    b0 = TinyBackbone()
    b1 = copy.deepcopy(b0)
    with torch.no_grad():
        for p in b1.parameters():
            p.add_(0.1 * torch.randn_like(p))
        b1.bn.running_mean.add_(0.3)
    b0.train(), b1.train()  # the measurement must use eval mode (running stats, no dropout) ...
    ds = _data()
    d = measure_distortion(b0, b1, ds, batch_size=5)
    assert b0.training and b1.training and b1.drop.training  # ... and restore the previous mode
    f0, f1 = _features(b0, ds), _features(b1, ds)
    assert d["feature_sq_change"] == pytest.approx(np.mean((f1 - f0) ** 2), rel=1e-5)
    assert d["feature_l2_change"] == pytest.approx(np.linalg.norm(f1 - f0, axis=1).mean(), rel=1e-5)
    cos = (f0 * f1).sum(1) / (np.linalg.norm(f0, axis=1) * np.linalg.norm(f1, axis=1))
    assert d["feature_cosine"] == pytest.approx(cos.mean(), rel=1e-5)
    # deterministic (dropout off) and independent of the batch size
    d2 = measure_distortion(b0, b1, ds, batch_size=64)
    assert d2["feature_sq_change"] == pytest.approx(d["feature_sq_change"], rel=1e-6)
    assert all(p.grad is None for p in list(b0.parameters()) + list(b1.parameters()))


def test_constant_feature_shift_gives_its_square():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    shifted = copy.deepcopy(lin)
    with torch.no_grad():
        shifted[1].bias.add_(0.5)
    d = measure_distortion(lin, shifted, _data(n=10))
    assert d["feature_sq_change"] == pytest.approx(0.25, rel=1e-6)
    assert d["feature_l2_change"] == pytest.approx(0.5 * 2, rel=1e-6)  # ||(0.5,)*4|| = 1


def test_max_images_and_bad_input():
    torch.manual_seed(2)
    b0, b1 = TinyBackbone(), TinyBackbone()
    ds = _data(n=30)
    d = measure_distortion(b0, b1, ds, max_images=7)
    assert d["num_images"] == 7
    sub = TensorDataset(ds.tensors[0][:7], ds.tensors[1][:7])
    assert d["feature_sq_change"] == pytest.approx(measure_distortion(b0, b1, sub)["feature_sq_change"], rel=1e-6)
    with pytest.raises(ValueError, match="max_images"):
        measure_distortion(b0, b1, ds, max_images=0)

    class PilLike(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return "not an image tensor", 0

    with pytest.raises(TypeError, match="eval_transform"):
        measure_distortion(b0, b1, PilLike())
    other = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    with pytest.raises(ValueError, match="different shapes"):
        measure_distortion(b0, other, ds)
