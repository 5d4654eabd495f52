"""Tests for lpft.vision.backbones.resnet: torchvision ResNet-50, MoCo-v2 and MoCo-TP (FMoW) checkpoints."""

import pytest
import torch
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones import (
    IMAGENET_MEAN, IMAGENET_STD, WeightsMismatchError, WeightsNotFoundError, create_backbone, has_batchnorm,
)


def _moco_state_dict(trunk_sd, *, with_key_encoder: bool) -> dict:
    """The state dict of a DDP-wrapped MoCo model trained with --mlp (moco/builder.py: encoder_q/encoder_k
    whose fc is Linear(2048, 2048) - ReLU - Linear(2048, 128), a [128, K] queue and its pointer)."""
    torch.manual_seed(1)
    enc = {k: v for k, v in trunk_sd.items() if not k.startswith("fc.")}
    enc.update({"fc.0.weight": torch.randn(2048, 2048), "fc.0.bias": torch.randn(2048),
                "fc.2.weight": torch.randn(128, 2048), "fc.2.bias": torch.randn(128)})
    sd = {f"module.encoder_q.{k}": v for k, v in enc.items()}
    if with_key_encoder:  # the key encoder starts as a copy; sharing the tensors keeps the file small
        sd.update({f"module.encoder_k.{k}": v for k, v in enc.items()})
    else:
        sd["module.encoder_k.conv1.weight"] = torch.randn(64, 3, 7, 7)
    sd["module.queue"] = torch.randn(128, 16)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return sd


@pytest.fixture(scope="module")
def moco_ckpt(resnet_sd, tmp_path_factory):
    sd = _moco_state_dict(resnet_sd, with_key_encoder=False)
    path = tmp_path_factory.mktemp("moco") / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd}, path)
    return path, sd


@pytest.fixture(scope="module")
def mocotp_ckpt(resnet_sd, tmp_path_factory):
    """A checkpoint in the exact layout geography-aware-ssl's main_moco_tp.py saves (random tensors)."""
    sd = _moco_state_dict(resnet_sd, with_key_encoder=True)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                                "nesterov": False, "params": list(range(161))}]}
    path = tmp_path_factory.mktemp("mocotp") / "mocotp_checkpoint_0200.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": optimizer}, path)
    return path


def _assert_trunk_equal(bb, resnet_sd):
    loaded = bb.net.state_dict()
    compared = 0
    for k, v in resnet_sd.items():
        if k.startswith("fc."):
            assert k not in loaded  # fc replaced by Identity
            continue
        assert torch.equal(loaded[k], v), k
        compared += 1
    assert compared == len(resnet_sd) - 2 == len(loaded)


# ---------------------------------------------------------------------------------------------- MoCo-v2


def test_moco_checkpoint_loads_exactly(moco_ckpt, resnet_sd):
    path, _ = moco_ckpt
    bb = create_backbone("moco_v2_resnet50", weights=path)
    _assert_trunk_equal(bb, resnet_sd)
    assert bb.feature_dim == 2048 and bb.weights_id.startswith("file:") and bb.family == "resnet"
    with torch.no_grad():
        assert bb.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 2048)


def test_moco_checkpoint_missing_conv_key_raises(moco_ckpt, tmp_path):
    _, sd = moco_ckpt
    broken = dict(sd)
    broken.pop("module.encoder_q.layer1.0.conv2.weight")
    path = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(WeightsMismatchError, match=r"layer1\.0\.conv2\.weight"):
        create_backbone("moco_v2_resnet50", weights=path)
    not_moco = tmp_path / "plain.pth"
    torch.save({k.replace("module.encoder_q.", ""): v for k, v in sd.items()}, not_moco)
    with pytest.raises(WeightsMismatchError, match="encoder_q"):
        create_backbone("moco_v2_resnet50", weights=not_moco)


# ---------------------------------------------------------------------------------------------- torchvision


def test_resnet50_weights_file(resnet_sd, tmp_path, pil_images):
    path = tmp_path / "rn50.pth"
    torch.save(resnet_sd, path)
    bb = create_backbone("resnet50", weights=path, image_size=64, augment=False)
    assert bb.feature_dim == 2048 and has_batchnorm(bb)
    assert torch.equal(bb.net.conv1.weight, resnet_sd["conv1.weight"])
    assert bb.train_transform is bb.eval_transform
    assert bb.eval_transform(pil_images["L"]).shape == (3, 64, 64)
    assert bb.norm_mean == IMAGENET_MEAN and bb.norm_std == IMAGENET_STD
    assert bb.interpolation == InterpolationMode.BILINEAR and bb.image_size == 64 and bb.family == "resnet"


# ---------------------------------------------------------------------------------------------- MoCo-TP (FMoW)


def test_mocotp_checkpoint_loads_exactly(mocotp_ckpt, resnet_sd):
    bb = create_backbone("mocotp_fmow_resnet50", weights=mocotp_ckpt)
    _assert_trunk_equal(bb, resnet_sd)
    assert bb.name == "mocotp_fmow_resnet50" and bb.family == "resnet" and bb.feature_dim == 2048
    assert bb.weights_id.startswith("file:") and str(mocotp_ckpt.resolve()) in bb.weights_id
    assert bb.norm_mean == IMAGENET_MEAN and bb.norm_std == IMAGENET_STD and bb.image_size == 224
    assert "fc" not in "".join(bb.state_dict())  # MLP projection head dropped
    with torch.no_grad():
        assert bb.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 2048)


def test_mocotp_needs_a_weights_file():
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("mocotp_fmow_resnet50")
    msg = str(info.value)
    for needle in ("mocotp_checkpoint_0200.pth.tar", "--weights", "never downloaded", "geography-aware-ssl",
                   "zenodo.org"):
        assert needle in msg, needle
    with pytest.raises(ValueError, match="no pretrained tags"):
        create_backbone("mocotp_fmow_resnet50", pretrained="imagenet")
    torch.manual_seed(0)
    assert create_backbone("mocotp_fmow_resnet50", pretrained="none").weights_id.startswith("random:")


def test_mocotp_wrong_layout_is_a_mismatch(resnet_sd, tmp_path):
    plain = tmp_path / "torchvision_layout.pth"
    torch.save(resnet_sd, plain)  # a supervised state dict, not a MoCo checkpoint
    with pytest.raises(WeightsMismatchError, match="encoder_q"):
        create_backbone("mocotp_fmow_resnet50", weights=plain)
    from torchvision.models import resnet18

    small = tmp_path / "moco_resnet18.pth.tar"  # MoCo layout, wrong architecture
    sd18 = {f"module.encoder_q.{k}": v for k, v in resnet18(weights=None).state_dict().items()}
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd18}, small)
    with pytest.raises(WeightsMismatchError, match="mis-shaped|does not fit"):
        create_backbone("mocotp_fmow_resnet50", weights=small)
