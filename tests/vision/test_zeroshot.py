"""Tests for lpft.vision.zeroshot on the tiny random-init CLIP (fast, offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lpft.vision.backbones import Classifier, create_backbone  # noqa: E402
from lpft.vision.zeroshot import SIMPLE_TEMPLATES, imagenet_templates, prompts_for, zeroshot_head  # noqa: E402

CLASSES = ["cat", "dog", "airplane", "handwritten digit seven", "red car"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of a {}."]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_backbone("tiny_clip")


def test_head_shapes_norms_and_bias(clip):
    w, b = zeroshot_head(clip, CLASSES, TEMPLATES, progress=False)
    assert w.shape == (len(CLASSES), clip.feature_dim) and b.shape == (len(CLASSES),)
    assert w.dtype == torch.float32 and w.device.type == "cpu"
    assert torch.equal(b, torch.zeros(len(CLASSES)))
    assert torch.allclose(w.norm(dim=1), torch.full((len(CLASSES),), clip.logit_scale), rtol=1e-5)
    # distinct classes get distinct rows
    assert torch.cdist(w, w).add(torch.eye(len(CLASSES))).min() > 0


def test_head_equals_independent_computation(clip):
    """One prompt at a time: normalise, average per class, renormalise, scale by exp(logit_scale)."""
    w, _ = zeroshot_head(clip, CLASSES, TEMPLATES, progress=False, batch_classes=2)
    model = clip.clip_model.eval()
    rows = []
    with torch.no_grad():
        for c in CLASSES:
            embs = []
            for t in TEMPLATES:
                e = model.encode_text(clip.tokenizer([t.replace("{}", c)]))[0]
                embs.append(e / e.norm())
            m = torch.stack(embs).mean(0)
            rows.append(m / m.norm())
    expected = torch.stack(rows) * model.logit_scale.exp()
    assert torch.allclose(w, expected, atol=1e-5)


def test_head_matches_open_clip_builder(clip):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    w, _ = zeroshot_head(clip, CLASSES, TEMPLATES, progress=False)
    with torch.no_grad():
        ref = build_zero_shot_classifier(clip.clip_model, clip.tokenizer, CLASSES, TEMPLATES,
                                         num_classes_per_batch=3, device="cpu")
    assert torch.allclose(w, (ref * clip.logit_scale).T, atol=1e-5)


def test_batching_does_not_change_the_head(clip):
    a, _ = zeroshot_head(clip, CLASSES, TEMPLATES, progress=False, batch_classes=1)
    b, _ = zeroshot_head(clip, CLASSES, TEMPLATES, progress=False, batch_classes=100)
    assert torch.allclose(a, b, atol=1e-5)


def test_zero_shot_logits_are_scaled_cosines(clip):
    w, b = zeroshot_head(clip, CLASSES, TEMPLATES, progress=False)
    clf = Classifier(clip, len(CLASSES)).eval()
    with torch.no_grad():
        clf.head.weight.copy_(w)
        clf.head.bias.copy_(b)
        x = torch.randn(3, 3, 32, 32)
        logits = clf(x)
        cos = F.normalize(clip.clip_model.encode_image(x), dim=-1) @ F.normalize(w, dim=-1).T
    assert torch.allclose(logits, clip.logit_scale * cos, atol=1e-4)


def test_training_modes_are_restored(clip):
    clip.train()
    clip.visual.eval()
    clip.clip_model.transformer.train()  # the text side is built in eval mode; any mode must survive
    zeroshot_head(clip, CLASSES[:2], TEMPLATES[:1], progress=False)
    assert clip.clip_model.transformer.training and not clip.visual.training
    clip.clip_model.transformer.eval()
    clip.eval()


def test_text_tower_is_outside_the_backbone_and_left_in_place(clip):
    """The head only needs the text side: it never enters the backbone's parameters or state dict, and
    building the head leaves it (and the image tower) where they were."""
    names = set(clip.state_dict())
    assert names and all(k.startswith("visual.") for k in names)
    text_params = {id(p) for p in clip.clip_model.transformer.parameters()}
    assert not text_params & {id(p) for p in clip.parameters()}
    before = {k: v.clone() for k, v in clip.clip_model.state_dict().items()}
    zeroshot_head(clip, CLASSES, TEMPLATES, device="cpu", progress=False)
    after = clip.clip_model.state_dict()
    assert all(torch.equal(v, after[k]) and after[k].device == v.device for k, v in before.items())


def test_encode_text_agrees_with_the_head(clip):
    w, _ = zeroshot_head(clip, CLASSES[:1], TEMPLATES[:1], progress=False)
    e = clip.encode_text([TEMPLATES[0].format(CLASSES[0])])
    assert torch.allclose(w[0], F.normalize(e[0], dim=-1) * clip.logit_scale, atol=1e-5)


def test_head_needs_normalised_features():
    torch.manual_seed(0)
    raw = create_backbone("tiny_clip", feature_norm=False)
    with pytest.raises(ValueError, match="feature_norm"):
        zeroshot_head(raw, CLASSES, TEMPLATES, progress=False)


def test_bad_inputs_are_rejected(clip):
    with pytest.raises(ValueError, match="CLIP backbone"):
        zeroshot_head(create_backbone("tiny_cnn"), CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match=r"\{\}"):
        zeroshot_head(clip, CLASSES, ["a photo of a cat"])
    with pytest.raises(ValueError, match="classnames"):
        zeroshot_head(clip, [], TEMPLATES)
    with pytest.raises(ValueError, match="classnames"):
        zeroshot_head(clip, "cat", TEMPLATES)


def test_templates():
    tpl = imagenet_templates()
    assert len(tpl) == 80 and len(set(tpl)) == 80
    assert all(t.count("{}") == 1 for t in tpl)
    assert tpl[0] == "a bad photo of a {}." and "itap of a {}." in tpl
    assert all("{}" in t for t in SIMPLE_TEMPLATES) and len(SIMPLE_TEMPLATES) >= 1
    assert prompts_for("cat", ["a {}.", lambda c: f"the {c}!"]) == ["a cat.", "the cat!"]


def test_imagenet_templates_agree_with_package_facts():
    meta = pytest.importorskip("lpft.vision.data.imagenet_meta")
    assert imagenet_templates() == list(meta.imagenet_templates())
