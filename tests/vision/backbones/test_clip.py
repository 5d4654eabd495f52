"""Tests for lpft.vision.backbones.clip: the image tower as the only module, features, weights, open_clip floor."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from lpft.vision.backbones import Classifier, ClipBackbone, WeightsNotFoundError, create_backbone
from lpft.vision.backbones.clip import build_clip, check_open_clip_version
from lpft.vision.backbones.tiny import TINY_CLIP_ARCH

TEXT_PARTS = ("transformer.", "token_embedding", "ln_final", "text_projection", "logit_scale", "attn_mask")


@pytest.fixture
def tiny_clip():
    torch.manual_seed(0)
    return create_backbone("tiny_clip")


def _build(pretrained, weights=None):
    return build_clip("tiny_clip", TINY_CLIP_ARCH, weights=weights, pretrained=pretrained, image_size=None,
                      augment=True)


def _has_quick_gelu(module) -> bool:
    import open_clip

    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in module.modules())


# ---------------------------------------------------------------------------------------------- features


def test_clip_features_normalised_exactly_once(tiny_clip):
    bb = tiny_clip.eval()
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


def test_feature_norm_off_gives_the_raw_projected_embedding():
    """LP-FT feeds the raw projected embedding (clip_model.py:197-198); WiSE-FT the normalised one."""
    torch.manual_seed(0)
    bb = create_backbone("tiny_clip", feature_norm=False).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        raw = bb(x)
        assert torch.equal(raw, bb.visual(x))
        assert (raw.norm(dim=-1) - 1).abs().min() > 1e-2
        bb.feature_norm = True
        unit = bb(x)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(unit, F.normalize(raw, dim=-1), atol=1e-6)
    assert "feature_norm=True" in repr(bb)
    bb.feature_norm = False
    assert "feature_norm=False" in repr(bb) and bb.features_id.endswith(":raw")
    assert bb.features_id.startswith(bb.weights_id)
    with pytest.raises(ValueError, match="True or False"):
        bb.feature_norm = 1


def test_clip_transforms_match_clip_recipe(tiny_clip):
    bb = tiny_clip
    rrc = [t for t in bb.train_transform.transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(rrc) == 1 and rrc[0].scale == (0.9, 1.0)
    assert rrc[0].interpolation == T.InterpolationMode.BICUBIC == bb.interpolation
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in bb.train_transform.transforms)
    norm = bb.eval_transform.transforms[-1]
    assert tuple(norm.mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bb.norm_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bb.norm_std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert bb.family == "clip" and bb.image_size == 32


# ---------------------------------------------------------------------------------------------- module tree, DDP


def test_classifier_holds_only_the_image_tower(tiny_clip):
    clf = Classifier(tiny_clip, 5)
    keys = list(clf.state_dict())
    assert all(k.startswith(("backbone.visual.", "head.")) for k in keys), keys
    assert not any(p in k for k in keys for p in TEXT_PARTS if not k.startswith("backbone.visual."))
    n_visual = sum(p.numel() for p in tiny_clip.clip_model.visual.parameters())
    assert sum(p.numel() for p in clf.parameters()) == n_visual + 5 * 32 + 5
    assert tiny_clip.visual is tiny_clip.clip_model.visual


def test_every_trainable_parameter_gets_a_gradient(tiny_clip):
    """What DistributedDataParallel without find_unused_parameters needs."""
    clf = Classifier(tiny_clip, 5).train()
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 5
    F.cross_entropy(clf(x), y).backward()
    trainable = [(n, p) for n, p in clf.named_parameters() if p.requires_grad]
    assert len(trainable) > 10
    assert [n for n, p in trainable if p.grad is None] == []
    assert all(p.grad is None for p in tiny_clip.clip_model.transformer.parameters())


def test_deepcopy_shares_the_text_tower(tiny_clip):
    clf = Classifier(tiny_clip, 3)
    twin = copy.deepcopy(clf)
    assert twin.backbone.clip_model is tiny_clip.clip_model and twin.backbone.tokenizer is tiny_clip.tokenizer
    assert twin.backbone.visual is not tiny_clip.visual
    w0, w1 = tiny_clip.visual.conv1.weight, twin.backbone.visual.conv1.weight
    assert torch.equal(w0, w1) and w0.data_ptr() != w1.data_ptr()
    with torch.no_grad():
        w1.add_(1.0)
    assert not torch.equal(w0, w1)
    assert twin.backbone.feature_norm is True and twin.backbone.weights_id == tiny_clip.weights_id


def test_module_conversions_leave_the_text_tower_alone(tiny_clip):
    tiny_clip.double()
    assert tiny_clip.visual.conv1.weight.dtype == torch.float64
    assert tiny_clip.clip_model.token_embedding.weight.dtype == torch.float32
    assert tiny_clip.clip_model.logit_scale.dtype == torch.float32


def test_encode_text_and_text_tower_context(tiny_clip):
    model = tiny_clip.clip_model
    model.transformer.train()
    emb = tiny_clip.encode_text(["a cat", "a dog"])
    with torch.no_grad():
        ref = model.encode_text(tiny_clip.tokenizer(["a cat", "a dog"]))
    assert emb.shape == (2, 32) and torch.allclose(emb, ref, atol=1e-6)
    with tiny_clip.text_tower("cpu") as m:
        assert m is model and not m.transformer.training
    assert model.transformer.training  # restored


# ---------------------------------------------------------------------------------------------- weights, ids


def test_tiny_clip_weights_roundtrip_and_image_size(tmp_path, pil_images):
    torch.manual_seed(1)
    src = create_backbone("tiny_clip")
    path = tmp_path / "tiny_clip.pt"
    torch.save(src.clip_model.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_backbone("tiny_clip", weights=path)
    for k, v in src.clip_model.state_dict().items():
        assert torch.equal(v, loaded.clip_model.state_dict()[k]), k
    assert loaded.weights_id.startswith("file:") and loaded.weights_id.endswith(":quickgelu")
    big = create_backbone("tiny_clip", weights=path, image_size=48)
    assert big.eval_transform(pil_images["RGB"]).shape == (3, 48, 48) and big.image_size == 48
    with torch.no_grad():
        assert big.eval()(torch.randn(2, 3, 48, 48)).shape == (2, 32)


def test_weights_id_names_the_activation(tmp_path, monkeypatch):
    """One weights file built with QuickGELU ('openai') or nn.GELU (a LAION tag): two networks, two ids."""
    import open_clip

    real = {t: open_clip.get_pretrained_cfg("ViT-B-32", t) for t in ("openai", "laion2b_s34b_b79k")}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: real.get(tag, {}))
    torch.manual_seed(3)
    path = tmp_path / "w.pt"
    torch.save(create_backbone("tiny_clip").clip_model.state_dict(), path)
    quick, plain = _build("openai", weights=path), _build("laion2b_s34b_b79k", weights=path)
    assert quick.weights_id.endswith(":quickgelu") and plain.weights_id.endswith(":gelu")
    assert quick.weights_id != plain.weights_id
    assert quick.weights_id.rsplit(":", 1)[0] == plain.weights_id.rsplit(":", 1)[0]  # same file, same digest
    assert _has_quick_gelu(quick) and not _has_quick_gelu(plain)
    assert quick.activation == "quickgelu" and plain.activation == "gelu"
    torch.manual_seed(3)
    rnd = create_backbone("tiny_clip")
    assert rnd.weights_id.startswith("random:") and rnd.weights_id.endswith(":quickgelu")


def test_clip_vit_b32_random_init_builds_with_quickgelu():
    torch.manual_seed(0)
    bb = create_backbone("clip_vit_b32", pretrained="none")
    assert isinstance(bb, ClipBackbone) and bb.feature_dim == 512 and bb.image_size == 224
    assert bb.weights_id.startswith("random:") and bb.weights_id.endswith(":quickgelu")
    assert _has_quick_gelu(bb)
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

    torch.manual_seed(6)
    src = create_backbone("tiny_clip")
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(src.clip_model.state_dict(), path)
    cfg = {"hf_hub": "example/tiny-clip/", "quick_gelu": quick_gelu, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: cfg if tag == "fake" else {})
    monkeypatch.setattr(ocp, "download_pretrained", lambda c, **kw: str(path))
    bb = _build("fake")
    assert bb.weights_id == f"fake:{'quickgelu' if quick_gelu else 'gelu'}"
    for k, v in src.clip_model.state_dict().items():
        assert torch.equal(v, bb.clip_model.state_dict()[k]), k
    assert _has_quick_gelu(bb) == quick_gelu
    assert tuple(bb.eval_transform.transforms[-1].mean) == (0.5, 0.5, 0.5) == bb.norm_mean

    def fail(c, **kw):
        raise OSError("no network")

    monkeypatch.setattr(ocp, "download_pretrained", fail)
    with pytest.raises(WeightsNotFoundError, match="example/tiny-clip.*--weights|--weights"):
        _build("fake")
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        _build("nonesuch")


# ---------------------------------------------------------------------------------------------- open_clip floor


@pytest.mark.parametrize("version", ["2.29.0", "2.29", "2.30.1.dev0", "3.3.0", "v10.0"])
def test_open_clip_version_accepted(version):
    assert check_open_clip_version(version) == version


@pytest.mark.parametrize("version", ["2.24.0", "2.28.9", "1.0"])
def test_open_clip_version_too_old_is_named(version):
    with pytest.raises(ImportError, match=rf"open_clip_torch {version} is installed.*>=2\.29"):
        check_open_clip_version(version)


def test_clip_build_checks_the_installed_open_clip(monkeypatch):
    import open_clip

    monkeypatch.setattr(open_clip, "__version__", "2.28.1")
    with pytest.raises(ImportError, match="2.28.1.*2.29"):
        create_backbone("tiny_clip")
    with pytest.raises(ValueError, match="parse"):
        check_open_clip_version("unknown")
