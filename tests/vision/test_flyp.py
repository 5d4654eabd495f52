"""FLYP (lpft.vision.flyp): the contrastive loss by hand, both towers train, the fine-tuned text tower classifies,
end-to-end records and resume, CLIP-only, and 2-rank DDP equals one process (slow)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import engine  # noqa: E402
from lpft.vision.backbones import Classifier, create_backbone  # noqa: E402
from lpft.vision.flyp import FlypCaptions, FlypLoss, FlypModel, contrastive_loss_sum  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

CLASSES = ["zero", "one", "two"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{}!"]
TINY = ["--backbone", "tiny_clip", "--limit", "48", "--batch-size", "16", "--epochs", "2", "--quiet"]


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("tiny_clip", image_size=32, augment=False)


class _Images(torch.utils.data.Dataset):
    """Seeded random images with labels 0, 1, 2, 0, ..."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % len(CLASSES)


def _hand_loss(u: list[list[float]], v: list[list[float]], s: float) -> float:
    """sum_i (-log softmax_j(s u_i.v_j)[i] - log softmax_j(s v_i.u_j)[i]) / 2, in plain Python."""
    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    total = 0.0
    for i in range(len(u)):
        li = -s * dot(u[i], v[i]) + math.log(sum(math.exp(s * dot(u[i], vj)) for vj in v))
        lt = -s * dot(v[i], u[i]) + math.log(sum(math.exp(s * dot(v[i], uj)) for uj in u))
        total += (li + lt) / 2
    return total


def test_contrastive_loss_equals_the_hand_computed_symmetric_loss():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    txt[3] = txt[1]  # two images with the same caption: each is the other's negative
    s = torch.tensor(2.5)
    got = contrastive_loss_sum(img, txt, s)
    want = _hand_loss(img.float().tolist(), txt.float().tolist(), 2.5)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(contrastive_loss_sum(img[:1], txt[:1], s)) == pytest.approx(0.0, abs=1e-6)  # one pair: no negative
    # a placeholder micro-batch contributes nothing, but keeps its features in the graph
    feats = img.float().clone().requires_grad_(True)
    dummy = contrastive_loss_sum(feats, txt.float(), s, real=False)
    dummy.backward()
    assert float(dummy.detach()) == 0.0 and feats.grad is not None and not feats.grad.any()


def test_flyp_criterion_uses_the_model_features_and_sampled_captions():
    model = FlypModel.from_backbone(_backbone(), CLASSES, TEMPLATES).train()
    caps = FlypCaptions(_Images(6), len(TEMPLATES), seed=3)
    crit = FlypLoss(model.prompt_tokens, caps)
    crit.set_epoch(2)
    x = torch.stack([caps[i][0] for i in range(6)])
    y = torch.tensor([caps[i][1] for i in range(6)])
    labels, tmpl = (y // len(TEMPLATES)).tolist(), (y % len(TEMPLATES)).tolist()
    assert labels == [i % 3 for i in range(6)]
    assert tmpl == caps.template.tolist() and len(set(tmpl)) > 1  # a template drawn per image
    assert caps.template.tolist() != FlypCaptions(_Images(6), len(TEMPLATES), seed=3).template.tolist()  # per epoch
    with torch.no_grad():
        got = float(crit(model, x, y))
        clip = model.clip
        u = clip.encode_image(x)
        u = (u / u.norm(dim=-1, keepdim=True)).tolist()
        texts = [TEMPLATES[t].format(CLASSES[c]) for c, t in zip(labels, tmpl)]
        v = clip.encode_text(_backbone().tokenizer(texts))
        v = (v / v.norm(dim=-1, keepdim=True)).tolist()
        s = float(clip.logit_scale.exp())
    assert got == pytest.approx(_hand_loss(u, v, s), rel=1e-5)


def test_both_towers_change_after_a_step_while_ft_leaves_the_text_tower(tmp_path):
    settings = engine.TrainSettings(lr=1e-3, epochs=1, batch_size=6, optimizer="adamw", momentum=None,
                                    weight_decay=0.1, schedule="constant")
    data = _Images(6)
    model = FlypModel.from_backbone(_backbone(), CLASSES, TEMPLATES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    caps = FlypCaptions(data, len(TEMPLATES), seed=0)
    engine.train(model, caps, data, settings, device=torch.device("cpu"), ckpt_dir=tmp_path / "flyp",
                 progress=False, criterion=FlypLoss(model.prompt_tokens, caps))
    after = model.state_dict()
    for key in ("clip.visual.conv1.weight", "clip.transformer.resblocks.0.attn.in_proj_weight",
                "clip.token_embedding.weight", "clip.text_projection", "clip.logit_scale"):
        assert not torch.equal(before[key], after[key]), key
    # FT: a Classifier over the CLIP image tower; the text tower (outside its module tree) never moves
    bb = _backbone()
    text_before = {k: v.clone() for k, v in bb.clip_model.state_dict().items() if not k.startswith("visual.")}
    clf = Classifier(bb, len(CLASSES))
    visual_before = bb.visual.conv1.weight.clone()
    engine.train(clf, data, data, settings, device=torch.device("cpu"), ckpt_dir=tmp_path / "ft", progress=False)
    assert not torch.equal(visual_before, bb.visual.conv1.weight)
    assert all(torch.equal(v, bb.clip_model.state_dict()[k]) for k, v in text_before.items())
    assert not any(k.startswith(("backbone.transformer", "backbone.token_embedding")) for k in clf.state_dict())


def test_classification_is_zero_shot_from_the_models_own_text_tower():
    from lpft.vision.zeroshot import zeroshot_head

    bb = _backbone()
    model = FlypModel.from_backbone(bb, CLASSES, TEMPLATES).eval()
    x = _Images(8).x
    calls = {"n": 0}
    encode_text = model.clip.encode_text

    def counting(*a, **k):
        calls["n"] += 1
        return encode_text(*a, **k)

    model.clip.encode_text = counting
    with torch.no_grad():
        logits = model(x)
        w, b = zeroshot_head(bb, CLASSES, TEMPLATES, device="cpu", progress=False)
        assert torch.allclose(logits, bb(x) @ w.T + b, atol=1e-5)  # at the start: CLIP's zero-shot classifier
        n = calls["n"]
        assert n >= 1 and torch.equal(model(x[:3]), logits[:3]) and calls["n"] == n  # the head is cached
        model.clip.text_projection.mul_(-1.0).add_(0.1)  # change the text tower only
        changed = model(x)
        assert calls["n"] > n  # a changed text tower gives a new head
    assert not torch.allclose(changed, logits, atol=1e-3)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.clip.encode_image(x), dim=-1)
        assert torch.allclose(changed, feats @ model.class_head().T, atol=1e-5)


def test_flyp_needs_a_clip_backbone(tmp_path):
    with pytest.raises(ValueError, match="CLIP") as e:
        main(["--method", "flyp", "--backbone", "tiny_cnn", "--limit", "16", "--quiet", "--out", str(tmp_path)])
    assert "tiny_clip" in str(e.value) and "clip_vit_b16" in str(e.value)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="not a CLIP model"):
        FlypModel.from_backbone(create_backbone("tiny_cnn"), CLASSES, TEMPLATES)


def _final(recs):
    return {(r["eval_split"], r["metric"]): r["value"] for r in recs if r.get("epoch") is None}


@pytest.fixture(scope="module")
def flyp_run(tmp_path_factory):
    return main([*TINY, "--method", "flyp", "--out", str(tmp_path_factory.mktemp("flyp") / "full")])


def test_flyp_run_writes_records_of_every_split(flyp_run):
    full = flyp_run
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["method"] == "flyp" and cfg["protocol"] == "wiseft" and cfg["grad_clip"] is None
    assert cfg["provenance"]["optimizer"] == "recipe:flyp" and cfg["warmup_steps"] == 0
    recs = read_records(full / "records.jsonl")
    final = _final(recs)
    for split in ("id_val", "id_test", "typeset", "corrupted"):
        assert {(split, m) for m in ("acc", "ece", "nll")} <= set(final), split
    assert all(r["method"] == "flyp" and r["alpha"] is None for r in recs)
    losses = [r["value"] for r in recs if r["metric"] == "loss"]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    hist = json.loads((full / "history.json").read_text())
    ck = torch.load(full / hist["selected_checkpoint"], weights_only=False)
    assert {"clip.logit_scale", "clip.token_embedding.weight", "clip.visual.conv1.weight"} <= set(ck["model"])
    assert final[("id_val", "acc")] == pytest.approx(max(h["val_acc"] for h in hist["history"][1:]), abs=1e-9)


def test_interrupted_flyp_run_resumes_to_the_same_records(flyp_run, tmp_path, monkeypatch):
    from lpft.vision import tboard

    recs = read_records(flyp_run / "records.jsonl")
    calls = {"n": 0}
    real_call = tboard.EpochLogger.__call__

    def crash_after_first_epoch(self, epoch, row):
        real_call(self, epoch, row)
        calls["n"] += 1
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(tboard.EpochLogger, "__call__", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        main([*TINY, "--method", "flyp", "--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(tboard.EpochLogger, "__call__", real_call)
    run_dir = tmp_path / "resumed" / flyp_run.name
    assert calls["n"] == 1 and not (run_dir / "records.jsonl").exists()
    assert torch.load(run_dir / "ckpt" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = main([*TINY, "--method", "flyp", "--out", str(tmp_path / "resumed"), "--resume"])
    again = read_records(resumed / "records.jsonl")
    key = lambda r: (r["eval_split"], r["metric"], str(r["epoch"]))  # noqa: E731
    assert sorted((key(r), r["value"]) for r in again) == sorted((key(r), r["value"]) for r in recs)


@pytest.mark.slow
def test_torchrun_flyp_equals_one_process(tmp_path):
    """2 gloo ranks: the global batch's negatives, gathered with gradients, give the one-process run. 65 images at
    batch 32: the last global batch has one image, so rank 1 runs a placeholder micro-batch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_ddp", Path(__file__).with_name("test_ddp.py"))
    ddp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddp)
    # plain SGD: the update is proportional to the gradient, so the weights compare the gradients themselves (Adam
    # would hide a scale and amplify the float noise of gradients that are exactly zero, e.g. attention key biases)
    argv = ["--backbone", "tiny_clip", "--method", "flyp", "--limit", "65", "--batch-size", "32", "--epochs", "2",
            "--optimizer", "sgd", "--lr", "0.1", "--quiet"]
    ddp._torchrun(tmp_path, [[*argv, "--out", str(tmp_path / "ddp"), "--run-id", "flyp"]])
    torch.set_num_threads(2)
    main([*argv, "--out", str(tmp_path / "single"), "--run-id", "flyp"])
    d = read_records(tmp_path / "ddp" / "flyp" / "records.jsonl")
    s = read_records(tmp_path / "single" / "flyp" / "records.jsonl")
    assert ddp._final(d) == pytest.approx(ddp._final(s), abs=1e-9) and ddp._final(s)
    assert ddp._losses(d) == pytest.approx(ddp._losses(s), rel=1e-5)
    wd = torch.load(tmp_path / "ddp" / "flyp" / "ckpt" / "last.pt", weights_only=False)["model"]
    ws = torch.load(tmp_path / "single" / "flyp" / "ckpt" / "last.pt", weights_only=False)["model"]
    start = FlypModel.from_backbone(_backbone(), [str(i) for i in range(10)], ["{}"]).state_dict()
    assert not torch.equal(ws["clip.text_projection"], start["clip.text_projection"])  # it trained
    for k in ws:
        assert torch.allclose(wd[k], ws[k], atol=1e-6, rtol=1e-5), k
