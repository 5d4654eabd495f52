"""Freeze-embed and surgical fine-tuning (lpft.vision.surgical): layouts, specs, errors, frozen runs."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import engine  # noqa: E402
from lpft.vision.backbones import Classifier, create_backbone  # noqa: E402
from lpft.vision.run import main  # noqa: E402
from lpft.vision.surgical import layout, trainable_names  # noqa: E402


def _classifier(name: str, **kw) -> Classifier:
    return Classifier(create_backbone(name, **kw), 10)


def _pretrained(name: str) -> dict[str, torch.Tensor]:
    """The state of the Classifier a run starts from (lpft.vision.run seeds, then builds the backbone)."""
    engine.seed_everything(0)
    backbone = create_backbone(name, image_size=32, augment=False)
    torch.manual_seed(0)  # lpft.vision.context.new_classifier: the head's seeded default init
    return Classifier(backbone, 10).state_dict()


@pytest.mark.parametrize("name, kind, embed, thirds, post", [
    ("resnet50", "resnet", ["backbone.net.conv1", "backbone.net.bn1"], (5, 6, 5), []),
    ("efficientnet_lite0", "efficientnet", ["backbone.net.conv_stem", "backbone.net.bn1"], (5, 6, 5),
     ["backbone.net.conv_head", "backbone.net.bn2"]),
    ("tiny_clip", "clip_vit", ["backbone.visual.conv1", "backbone.visual.class_embedding",
                               "backbone.visual.positional_embedding", "backbone.visual.ln_pre"], (1, 0, 1),
     ["backbone.visual.ln_post", "backbone.visual.proj"]),
    ("tiny_cnn", "tiny_cnn", ["backbone.net.body.0", "backbone.net.body.1"], (0, 2, 0), []),
])
def test_layouts_per_family(name, kind, embed, thirds, post):
    lay = layout(_classifier(name, pretrained="none") if name != "tiny_cnn" else _classifier(name))
    assert lay.kind == kind and lay.embed == embed and lay.post == post
    assert tuple(len(t) for t in lay.thirds()) == thirds
    if kind == "resnet":  # blocks in network order: layer1.0 first, layer4.2 last
        first, _, last = lay.thirds()
        assert first[0] == "backbone.net.layer1.0" and last[-1] == "backbone.net.layer4.2"


def test_specs_select_groups_prefixes_and_exclusions():
    m = _classifier("tiny_clip")
    names = [n for n, _ in m.named_parameters()]
    head = {"head.weight", "head.bias"}
    last = set(trainable_names(m, "last"))
    assert head <= last and any(n.startswith("backbone.visual.transformer.resblocks.1.") for n in last)
    assert not any(n.startswith("backbone.visual.transformer.resblocks.0.") for n in last)
    assert {"backbone.visual.ln_post.weight", "backbone.visual.proj"} <= last  # after the blocks: part of last
    assert set(trainable_names(m, "head")) == head
    fe = set(trainable_names(m, None, freeze_embed=True))
    embed = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
    assert fe == {n for n in names if not n.startswith(tuple(f"backbone.visual.{e}" for e in embed))}
    pre = set(trainable_names(m, "backbone.visual.transformer.resblocks.0"))
    assert pre == {n for n in names if n.startswith("backbone.visual.transformer.resblocks.0.")} | head
    assert set(trainable_names(m, "all,-head")) == set(names) - head
    assert set(trainable_names(m, "-first")) == set(names) - set(trainable_names(m, "first")) | head


def test_bad_specs_are_clear_errors():
    m = _classifier("tiny_clip")
    with pytest.raises(ValueError, match=r"prefix 'backbone.visual.transformer.resblocks.7' matches no parameter.*"
                                         r"prefixes: backbone.visual.conv1, .*resblocks.1"):
        trainable_names(m, "backbone.visual.transformer.resblocks.7")
    with pytest.raises(ValueError, match="group 'middle' matches no parameter"):
        trainable_names(m, "middle")  # two blocks: first and last only
    with pytest.raises(ValueError, match="leaves no parameter to train"):
        trainable_names(m, "head,-head")
    other = torch.nn.Module()  # an architecture without a layout: prefixes still work, groups all / head only
    other.backbone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    other.head = torch.nn.Linear(4, 2)
    assert layout(other) is None
    with pytest.raises(ValueError, match="--freeze-embed: no embedding is defined for this backbone"):
        trainable_names(other, None, freeze_embed=True)
    with pytest.raises(ValueError, match="group 'first' matches no parameter.*only 'all' and 'head' are groups"):
        trainable_names(other, "first")
    assert trainable_names(other, "backbone.1") == ["backbone.1.weight", "backbone.1.bias", "head.weight", "head.bias"]


def test_freeze_embed_run_keeps_the_embedding_bit_identical(tmp_path):
    run = main(["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "2", "--quiet", "--no-distortion",
                "--method", "ft", "--out", str(tmp_path), "--freeze-embed"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["freeze_embed"] is True and cfg["provenance"]["freeze_embed"] == "given"
    pre = _pretrained("tiny_cnn")
    final = torch.load(run / "ckpt" / "last.pt")["model"]
    for k in ("weight", "bias", "running_mean", "running_var"):  # the stem's BatchNorm is frozen entirely
        assert torch.equal(final[f"backbone.net.body.1.{k}"], pre[f"backbone.net.body.1.{k}"]), k
    assert torch.equal(final["backbone.net.body.0.weight"], pre["backbone.net.body.0.weight"])
    for k in ("backbone.net.body.3.weight", "backbone.net.body.4.weight", "backbone.net.body.4.running_mean",
              "head.weight"):
        assert not torch.equal(final[k], pre[k]), k  # the rest trained


def test_surgical_run_trains_only_the_chosen_block(tmp_path):
    run = main(["--backbone", "tiny_clip", "--limit", "64", "--epochs", "1", "--quiet", "--no-distortion",
                "--method", "lpft", "--lp-num-cs", "4", "--lr", "1e-2", "--out", str(tmp_path),
                "--train-blocks", "last"])
    pre = _pretrained("tiny_clip")
    final = torch.load(run / "ckpt" / "last.pt")["model"]
    trained = {k for k in final if not torch.equal(final[k], pre[k])}
    assert trained and all(k.startswith(("backbone.visual.transformer.resblocks.1.", "backbone.visual.ln_post.",
                                         "backbone.visual.proj", "head.")) for k in trained), sorted(trained)
    assert any(k.startswith("backbone.visual.transformer.resblocks.1.") for k in trained)


def test_wiseft_with_only_the_head_trained_uses_cached_features(tmp_path):
    """Frozen backbone (BatchNorm included): theta_1 differs from theta_0 in the head only, so WiSE-FT takes the
    cached-feature path (no BatchNorm variants) and alpha = 0 is the LP model."""
    run = main(["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "1", "--quiet", "--no-distortion",
                "--method", "wiseft", "--lp-num-cs", "4", "--alphas", "0,1", "--out", str(tmp_path),
                "--train-blocks", "head"])
    from lpft.vision.records import read_records

    final = [r for r in read_records(run / "records.jsonl") if r["metric"] == "acc" and r["epoch"] is None]
    assert final and all(r.get("bn_stats") is None for r in final)
    assert {r["alpha"] for r in final} == {0.0, 1.0}


def test_the_lab_backbone_has_a_layout_one_resolution_per_third():
    from lpft.vision.lab.model import LabResNet

    class Bb(torch.nn.Module):  # the Classifier names: backbone.net.<LabResNet>
        def __init__(self):
            super().__init__()
            self.net = LabResNet()

    m = torch.nn.Module()
    m.backbone, m.head = Bb(), torch.nn.Linear(64, 10)
    lay = layout(m)
    b = "backbone.net.body"
    assert lay.kind == "lab_resnet" and lay.embed == [f"{b}.0.0", f"{b}.0.1"]
    first, middle, last = lay.thirds()
    assert (first, middle, last) == ([f"{b}.0.3"], [f"{b}.1.0", f"{b}.1.1", f"{b}.1.3"],
                                     [f"{b}.2.0", f"{b}.2.1", f"{b}.2.3"])
    names = [n for n, _ in m.named_parameters() if n.startswith("backbone")]
    units = lay.units()  # every backbone parameter belongs to exactly one unit
    assert all(sum(n == u or n.startswith(u + ".") for u in units) == 1 for n in names)
    assert set(trainable_names(m, "last")) == {n for n in names if n.startswith(f"{b}.2.")} | {"head.weight",
                                                                                              "head.bias"}
    fe = set(trainable_names(m, None, freeze_embed=True))
    assert f"{b}.0.0.weight" not in fe and f"{b}.0.3.conv1.weight" in fe
