"""Tests for lpft.vision.backbones.tiny (and the weight-file helpers of .weights they exercise)."""

import pytest
import torch

from lpft.vision.backbones import WeightsMismatchError, create_backbone, has_batchnorm
from lpft.vision.backbones.tiny import TINY_CLIP_ARCH, register_tiny_clip
from lpft.vision.backbones.weights import load_file, strip_prefix


def test_tiny_cnn_deterministic_under_manual_seed():
    torch.manual_seed(3)
    a = create_backbone("tiny_cnn")
    torch.manual_seed(3)
    b = create_backbone("tiny_cnn")
    torch.manual_seed(4)
    c = create_backbone("tiny_cnn")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert a.weights_id == b.weights_id != c.weights_id
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert a.feature_dim == 16 and has_batchnorm(a) and a.family == "tiny" and a.image_size == 32


def test_weights_file_roundtrip_tiny_cnn(tmp_path):
    torch.manual_seed(0)
    src = create_backbone("tiny_cnn")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.net.state_dict().items()}}, path)
    loaded = create_backbone("tiny_cnn", weights=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert loaded.weights_id.startswith("file:") and str(path.resolve()) in loaded.weights_id
    bad = tmp_path / "bad.pt"
    sd = src.net.state_dict()
    sd.pop("body.0.weight")
    torch.save(sd, bad)
    with pytest.raises(WeightsMismatchError, match="body.0.weight"):
        create_backbone("tiny_cnn", weights=bad)


def test_load_file_formats(tmp_path):
    sd = {"a.weight": torch.randn(2, 2), "b": torch.arange(3)}
    for wrap in ("state_dict", "model", "model_state_dict"):
        path = tmp_path / f"{wrap}.pt"
        torch.save({wrap: sd, "epoch": 3}, path)
        got = load_file(path)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_file(tmp_path / "w.safetensors")["a.weight"], sd["a.weight"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="could not read"):
        load_file(tmp_path / "junk.pt")
    torch.save({"x": 1}, tmp_path / "nodict.pt")
    with pytest.raises(WeightsMismatchError, match="does not hold a state dict"):
        load_file(tmp_path / "nodict.pt")
    assert set(strip_prefix({"module.a": 1, "module.b": 2}, "module.")) == {"a", "b"}
    assert set(strip_prefix({"module.a": 1, "b": 2}, "module.")) == {"module.a", "b"}


def test_tiny_clip_is_registered_once_with_open_clip():
    import open_clip

    register_tiny_clip()
    register_tiny_clip()
    assert TINY_CLIP_ARCH in open_clip.list_models()
    with pytest.raises(ValueError, match="no published weights"):
        create_backbone("tiny_clip", pretrained="openai")
