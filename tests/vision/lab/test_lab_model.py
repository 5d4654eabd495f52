"""The lab network (lpft/vision/lab/model.py) and its inputs."""

import numpy as np
import pytest
import torch

from lpft.vision.backbones import has_batchnorm
from lpft.vision.lab.model import LabResNet, ProjectionHead, values_to_inputs


def test_shape_size_and_no_batchnorm():
    torch.manual_seed(0)
    net = LabResNet()
    assert sum(p.numel() for p in net.parameters()) == 120_624  # the feasibility study's SmallResNet(16)
    assert net.feature_dim == 64 and not has_batchnorm(net)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    out = net(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 64) and (out >= 0).all()  # after a ReLU and average pooling
    assert LabResNet(width=8).feature_dim == 32
    assert ProjectionHead(64, 128, 32)(out).shape == (5, 32)


def test_three_equal_channels_read_as_one():
    torch.manual_seed(0)
    net = LabResNet().eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(net(x), net(x.expand(-1, 3, -1, -1)), atol=1e-6)


def test_train_and_eval_mode_agree():
    """GroupNorm: the features depend on each image alone, whatever the mode or the batch."""
    torch.manual_seed(0)
    net = LabResNet()
    x = torch.rand(6, 1, 8, 8)
    a = net.train()(x)
    b = net.eval()(x)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(net(x[:2]), b[:2], atol=1e-6)


def test_bad_inputs_are_refused():
    net = LabResNet()
    with pytest.raises(ValueError, match="1 or 3"):
        net(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="width"):
        LabResNet(width=1)
    with pytest.raises(ValueError, match="64"):
        values_to_inputs(np.zeros((3, 10)))


def test_values_to_inputs_quantises_like_the_image_path():
    v = np.array([[0, 1, 8, 15, 16] + [0] * 59], dtype=float)
    x = values_to_inputs(v)
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    expected = np.rint(np.array([0, 1, 8, 15, 16]) * 255 / 16) / 255
    assert np.allclose(x.flatten()[:5].numpy(), expected, atol=1e-7)
    assert torch.equal(values_to_inputs(v.reshape(1, 8, 8)), x)
