"""Tests for lpft.vision.backbones.base (registry, contract, create_backbone, Classifier) and .transforms."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones import (
    BACKBONES,
    FAMILIES,
    Backbone,
    Classifier,
    ToRGB,
    WeightsNotFoundError,
    create_backbone,
    has_batchnorm,
    list_backbones,
    make_transforms,
)

FAMILY = {
    "clip_vit_b16": "clip", "clip_vit_b32": "clip", "clip_vit_l14": "clip", "clip_rn50": "clip",
    "resnet50": "resnet", "moco_v2_resnet50": "resnet", "mocotp_fmow_resnet50": "resnet",
    "efficientnet_lite0": "efficientnet", "tiny_cnn": "tiny", "tiny_clip": "clip", "digits_simclr": "tiny",
}
OFFLINE_BUILDABLE = ["tiny_cnn", "tiny_clip", "efficientnet_lite0"]
NEEDS_DOWNLOAD = ["clip_vit_b16", "clip_vit_b32", "clip_vit_l14", "clip_rn50", "resnet50", "moco_v2_resnet50"]


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_backbone_with_its_family():
    assert set(list_backbones()) == set(FAMILY)
    assert list_backbones() == BACKBONES.names()
    assert {n: BACKBONES.get(n).family for n in list_backbones()} == FAMILY
    assert set(FAMILY.values()) == set(FAMILIES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="tiny_cnn"):
        create_backbone("resnet5O")


def test_missing_weights_file_is_clear(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_backbone("tiny_cnn", weights=tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", OFFLINE_BUILDABLE)
def test_offline_backbones_honour_contract(name, pil_images):
    torch.manual_seed(0)
    bb = create_backbone(name)
    assert isinstance(bb, Backbone) and bb.name == name and bb.family == FAMILY[name]
    assert isinstance(bb.weights_id, str) and bb.weights_id
    assert bb.is_clip == (name == "tiny_clip")
    images = pil_images
    for mode, img in images.items():
        for tf in (bb.eval_transform, bb.train_transform):
            x = tf(img)
            assert x.dtype == torch.float32 and x.shape == (3, bb.image_size, bb.image_size), mode
    batch = torch.stack([bb.eval_transform(img) for img in images.values()])
    bb.eval()
    with torch.no_grad():
        feats = bb(batch)
    assert feats.shape == (len(images), bb.feature_dim)
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("name", OFFLINE_BUILDABLE)
def test_preprocessing_facts_match_the_default_transforms(name):
    """norm_mean / norm_std / interpolation / image_size are what the default transforms use."""
    bb = create_backbone(name)
    assert isinstance(bb.norm_mean, tuple) and isinstance(bb.norm_std, tuple)
    assert isinstance(bb.interpolation, InterpolationMode)
    norm = bb.eval_transform.transforms[-1]
    assert isinstance(norm, T.Normalize)
    assert tuple(norm.mean) == pytest.approx(bb.norm_mean) and tuple(norm.std) == pytest.approx(bb.norm_std)
    resize = next(t for t in bb.eval_transform.transforms if isinstance(t, T.Resize))
    crop = next(t for t in bb.eval_transform.transforms if isinstance(t, T.CenterCrop))
    assert resize.interpolation == bb.interpolation and tuple(crop.size) == (bb.image_size, bb.image_size)


def test_transforms_are_assignable(pil_images):
    bb = create_backbone("tiny_cnn")
    tf = T.Compose([ToRGB(), T.Resize((32, 32)), T.ToTensor()])
    bb.train_transform = tf
    bb.eval_transform = tf
    assert bb.train_transform is tf and bb.eval_transform is tf
    assert bb.eval_transform(pil_images["L"]).shape == (3, 32, 32)


def test_transform_rejects_non_pil():
    bb = create_backbone("tiny_cnn")
    with pytest.raises(TypeError, match="PIL"):
        bb.eval_transform(np.zeros((8, 8, 3), dtype=np.uint8))


def test_forward_rejects_bad_shape():
    bb = create_backbone("tiny_cnn")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        bb(torch.zeros(2, 1, 32, 32))


def test_backbone_rejects_unknown_family_and_interpolation():
    kw = dict(image_size=8, norm_mean=(0, 0, 0), norm_std=(1, 1, 1), train_transform=None, eval_transform=None)
    with pytest.raises(ValueError, match="family"):
        Backbone("x", nn.Identity(), 3, "w", family="vit", interpolation=InterpolationMode.BILINEAR, **kw)
    with pytest.raises(ValueError, match="InterpolationMode"):
        Backbone("x", nn.Identity(), 3, "w", family="tiny", interpolation="bilinear", **kw)


def test_to_rgb_rescales_wide_greyscale(pil_images):
    img = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    out = np.asarray(ToRGB()(img))
    assert out.shape == (2, 2, 3) and out[..., 0].tolist() == [[0, 64], [128, 255]]
    assert ToRGB()(pil_images["RGB"]) is pil_images["RGB"] and repr(ToRGB()) == "ToRGB()"


def test_make_transforms_without_augment_shares_the_eval_transform():
    kw = dict(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation=InterpolationMode.BILINEAR, resize=20,
              train_scale=(0.5, 1.0), flip=True)
    train, ev = make_transforms(16, augment=False, **kw)
    assert train is ev
    train, ev = make_transforms(16, augment=True, **kw)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in train.transforms)
    rrc = next(t for t in train.transforms if isinstance(t, T.RandomResizedCrop))
    assert rrc.scale == (0.5, 1.0) and rrc.size == (16, 16)


# ---------------------------------------------------------------------------------------------- create_backbone


@pytest.mark.parametrize("name", NEEDS_DOWNLOAD)
def test_download_weights_fail_cleanly_offline(name, tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(name)
    err = info.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, RuntimeError)
    msg = str(err)
    assert "--weights" in msg
    where = str(tmp_path / "hf") if name.startswith("clip") else str(tmp_path / "torch" / "hub" / "checkpoints")
    assert where in msg


def test_unknown_pretrained_tag_is_rejected():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_backbone("resnet50", pretrained="imagenet21k")
    with pytest.raises(ValueError, match="no published weights"):
        create_backbone("tiny_cnn", pretrained="openai")


@pytest.mark.parametrize("name", ["tiny_cnn", "efficientnet_lite0", "resnet50", "mocotp_fmow_resnet50"])
@pytest.mark.parametrize("value", [True, False])
def test_feature_norm_is_a_clip_option(name, value):
    # Raised before anything is built or looked up (resnet50 would otherwise fail offline first).
    with pytest.raises(ValueError, match="feature_norm is a CLIP option"):
        create_backbone(name, feature_norm=value)


def test_feature_norm_must_be_a_bool():
    with pytest.raises(ValueError, match="True, False or None"):
        create_backbone("tiny_clip", feature_norm="yes")
    assert create_backbone("tiny_clip", feature_norm=False).feature_norm is False
    assert create_backbone("tiny_clip").feature_norm is True
    assert create_backbone("tiny_cnn", feature_norm=None).family == "tiny"


def test_has_batchnorm():
    assert has_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
    assert not has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert not has_batchnorm(create_backbone("tiny_clip"))
    assert has_batchnorm(create_backbone("tiny_cnn"))


# ---------------------------------------------------------------------------------------------- Classifier


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_clip"])
def test_classifier_shapes(name):
    torch.manual_seed(0)
    bb = create_backbone(name)
    clf = Classifier(bb, 7)
    assert clf.backbone is bb and isinstance(clf.head, nn.Linear)
    assert clf.head.in_features == bb.feature_dim and clf.head.out_features == 7
    x = torch.randn(5, 3, bb.image_size, bb.image_size)
    clf.eval()
    with torch.no_grad():
        logits, feats = clf(x), clf.features(x)
    assert logits.shape == (5, 7) and feats.shape == (5, bb.feature_dim)
    assert torch.allclose(logits, feats @ clf.head.weight.T + clf.head.bias, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(bb, 0)


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_clip"])
def test_classifier_head_runs_in_fp32_under_autocast(name):
    """Under bf16 autocast the features are bf16, but the head multiplies them in fp32 (fp32 logits)."""
    torch.manual_seed(0)
    clf = Classifier(create_backbone(name), 10).eval()
    with torch.no_grad():
        clf.head.weight.mul_(100.0)  # CLIP-like scale, where bf16 logits would be visibly coarse
        x = torch.randn(8, 3, clf.backbone.image_size, clf.backbone.image_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = clf.backbone(x)
            logits = clf(x)
        expected = F.linear(feats.float(), clf.head.weight, clf.head.bias)  # fp32, outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_logits = clf.head(feats)
    assert feats.dtype == torch.bfloat16  # the test means something: the backbone did run in bf16
    assert logits.dtype == torch.float32
    assert torch.equal(logits, expected)
    assert bf16_logits.dtype == torch.bfloat16 and not torch.equal(bf16_logits.float(), expected)
