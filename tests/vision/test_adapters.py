"""LoRA (lpft.vision.adapters, through peft) and SSF (lpft.vision.ssf): what makes each method itself.

LoRA: the base weights stay bit-identical, only adapters and head get gradients, merging gives the adapter model's
outputs with the original state-dict keys. SSF: the identity at initialisation, the backbone frozen, folding gives
the same outputs with the original keys. Both: the run writes ``merged.pt`` (the selected checkpoint) and
``init_head.pt``, resumes to the uninterrupted result, and bad options are clear errors.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.adapters import LoRA, lora_targets  # noqa: E402
from lpft.vision.backbones import Classifier, create_backbone  # noqa: E402
from lpft.vision.config import RunConfig, resolve_config  # noqa: E402
from lpft.vision.modifiers import modifiers_label  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402
from lpft.vision.ssf import SSF, ScaleShift, ssf_sites  # noqa: E402

pytest.importorskip("peft")

BACKBONES = ["tiny_cnn", "tiny_clip", "digits_simclr"]  # convolutions + BatchNorm, attention + MLP, GroupNorm ResNet
#: merged / folded logits vs the adapter model's (float32 rounding of W0 + BA and of diag(g) W; logits are O(1))
TOL = 1e-5
TINY = ["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "2", "--quiet", "--lp-num-cs", "4", "--no-distortion"]


def _model(name: str, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    kw = {"pretrained": "none"} if name == "digits_simclr" else {}  # the architecture matters, not the weights
    return Classifier(create_backbone(name, augment=False, **kw), 5)


def _batch(model: Classifier, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    s = model.backbone.image_size
    return torch.rand(n, 3, s, s, generator=g), torch.arange(n) % 5


def _steps(model: Classifier, hook, n: int = 4, lr: float = 0.1) -> None:
    """A few SGD steps the way the engine takes them (train mode, then the hook's train_mode)."""
    x, y = _batch(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(n):
        model.train()
        hook.train_mode(model)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _base_name(name: str) -> str:  # peft's wrapped name -> the original one
    return name.replace(".base_layer.", ".")


def _ssf_base_name(name: str) -> str:  # a name under an SSF wrapper / parametrisation -> the original one
    for p in ("in_proj_weight", "in_proj_bias"):
        name = name.replace(f".parametrizations.{p}.original", f".{p}")
    return name.replace(".op.", ".")


# --- LoRA -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
def test_lora_trains_adapters_and_head_only_and_merges_to_the_adapter_model(name):
    model = _model(name)
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch(model)
    hook = LoRA(4, seed=0)
    hook.setup(model)
    model.eval()
    assert torch.equal(model(x), Classifier.forward(_model(name).eval(), x))  # B = 0: the pretrained model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("head.")}
    assert hook.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    model.train()
    hook.train_mode(model)  # as the engine does every epoch: frozen BatchNorm layers back to eval mode
    F.cross_entropy(model(x), y).backward()  # only adapters and head get gradients
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    _steps(model, hook)
    state = model.state_dict()
    base = {_base_name(k): v for k, v in state.items() if ".lora_" not in k}
    assert set(base) == set(pre)
    for k, v in pre.items():  # the frozen weights and (eval-mode BatchNorm) statistics: bit for bit
        assert torch.equal(base[k], v) or k.startswith("head."), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if ".lora_B." in k)
    model.eval()
    adapted = model(x)
    merged = hook.merge(model)
    assert merged is model and list(model.state_dict()) == list(pre)  # original names, in the original order
    assert all(model.state_dict()[k].shape == v.shape for k, v in pre.items())
    assert (merged(x) - adapted).abs().max().item() < TOL
    assert not any(".lora_" in n for n, _ in model.named_modules())
    assert all(p.requires_grad for p in model.parameters())  # as before setup


def test_lora_default_targets_per_family():
    mods, params = lora_targets(_model("tiny_clip"))
    blocks = "backbone.visual.transformer.resblocks"
    assert mods == [f"{blocks}.{i}.mlp.{c}" for i in (0, 1) for c in ("c_fc", "c_proj")]
    assert params == [f"{blocks}.{i}.attn.in_proj_weight" for i in (0, 1)]
    assert lora_targets(_model("tiny_cnn")) == (["backbone.net.body.0", "backbone.net.body.3"], [])
    lab_mods, _ = lora_targets(_model("digits_simclr"))
    assert len(lab_mods) == 9 and all(n.startswith("backbone.net.body.") for n in lab_mods)  # 3 stages x 3 convs
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    mods, params = lora_targets(vit)
    assert params == [] and mods == [f"blocks.{i}.{n}" for i in (0, 1)
                                     for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert lora_targets(_model("tiny_clip"), "c_fc, attn.in_proj_weight")[0][0].endswith("0.mlp.c_fc")


def test_bad_lora_targets_are_clear_errors():
    clip = _model("tiny_clip")
    with pytest.raises(ValueError, match=r"'nope' matches no .*available: .*resblocks\.<i>\.mlp\.c_fc"):
        lora_targets(clip, "nope")
    with pytest.raises(ValueError, match="out_proj.*never runs"):
        lora_targets(clip, "out_proj")
    assert lora_targets(clip, "conv") == (["backbone.visual.conv1"], [])  # the patch embedding
    with pytest.raises(ValueError, match="no linear layer that runs"):
        lora_targets(_model("tiny_cnn"), "linear")
    with pytest.raises(ValueError, match="positive integer"):
        LoRA(0)
    with pytest.raises(ValueError, match="must be > 0"):
        LoRA(4, alpha=0.0)


# --- SSF ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
def test_ssf_is_the_identity_at_init_and_folds_to_the_same_outputs(name):
    model = _model(name)
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = _batch(model)
    want = model.eval()(x)
    hook = SSF()
    hook.setup(model)
    assert torch.equal(model.eval()(x), want)  # scale 1, shift 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or n.rsplit(".", 1)[1] in ("scale", "shift", "qkv_scale",
                                                                              "qkv_shift") for n in trainable)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a trained-looking SSF: every scale and shift away from the identity
        for n, p in model.named_parameters():
            if n in trainable and not n.startswith("head."):
                p.copy_((1.0 if "scale" in n else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    _steps(model, hook, n=2, lr=0.05)
    frozen = {_ssf_base_name(k): v for k, v in model.state_dict().items() if not k.endswith(("scale", "shift"))}
    assert set(frozen) == set(pre)
    for k, v in pre.items():  # the backbone, BatchNorm statistics included, is untouched
        assert torch.equal(frozen[k], v) or k.startswith("head."), k
    model.eval()
    unfolded = model(x)
    assert (unfolded - want).abs().max().item() > 1e-3  # SSF changes the function
    hook.merge(model)
    assert list(model.state_dict()) == list(pre) and not any(isinstance(m, ScaleShift) for m in model.modules())
    assert all(model.state_dict()[k].shape == v.shape for k, v in pre.items())
    assert (model(x) - unfolded).abs().max().item() < TOL
    assert all(p.requires_grad for p in model.parameters())


def test_ssf_sites_follow_the_documented_placement():
    clip = ssf_sites(_model("tiny_clip"))
    v = "backbone.visual"
    block = [f"{v}.transformer.resblocks.0.{n}" for n in ("ln_1", "attn", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    assert set(block) | {f"{v}.ln_pre", f"{v}.ln_post"} <= set(clip)
    assert f"{v}.conv1" not in clip and f"{v}.transformer.resblocks.0.attn.out_proj" not in clip  # no bias / no forward
    assert clip[f"{v}.transformer.resblocks.0.mlp.c_fc"] == ("linear", 256, -1)
    assert set(ssf_sites(_model("tiny_cnn"))) == {"backbone.net.body.1", "backbone.net.body.4"}  # the BatchNorms
    lab = ssf_sites(_model("digits_simclr"))
    assert len(lab) == 9 and all(k == "norm" and d == 1 for k, _, d in lab.values())  # the GroupNorms
    model = _model("tiny_clip")
    SSF().setup(model)
    attn = model.backbone.visual.transformer.resblocks[0].attn
    with torch.no_grad():
        attn.qkv_scale.fill_(2.0)
        attn.qkv_shift.fill_(0.5)
    w, b = attn.op.parametrizations.in_proj_weight.original, attn.op.parametrizations.in_proj_bias.original
    assert torch.equal(attn.op.in_proj_weight, 2 * w) and torch.equal(attn.op.in_proj_bias, 2 * b + 0.5)  # after qkv


# --- runs -----------------------------------------------------------------------------------------------------
def test_adapter_options_validate_and_label_runs():
    def cfg(**kw):
        return resolve_config(RunConfig(**{"method": "lpft", "backbone": "tiny_cnn", **kw}), prov := {}), prov

    c, prov = cfg(lora_rank=4)
    assert (c.lora_rank, c.lora_alpha, c.lora_targets) == (4, 4.0, "default")
    assert prov["lora_alpha"] == prov["lora_targets"] == "derived"
    assert cfg(lora_alpha=16.0)[0].lora_rank == 8  # peft's default rank
    assert modifiers_label(c) == "lora_rank=4,lora_alpha=4.0,lora_targets=default"
    assert modifiers_label(cfg(ssf=True)[0]) == "ssf=True" and modifiers_label(cfg(ssf=False)[0]) is None
    for kw, msg in [({"lora_rank": 0}, "positive integer"), ({"lora_rank": 4, "ssf": True}, "exclude each other"),
                    ({"ssf": True, "train_blocks": "last"}, "excludes --train-blocks"),
                    ({"lora_rank": 2, "freeze_embed": True}, "excludes --freeze-embed"),
                    ({"lora_targets": " , "}, "names nothing"), ({"method": "lp", "ssf": True}, "does not fine-tune")]:
        with pytest.raises(ValueError, match=msg):
            cfg(**kw)


def test_lora_without_peft_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # what an environment without peft sees
    with pytest.raises(ValueError, match=r'pip install "lpft\[lora\]"'):
        resolve_config(RunConfig(method="ft", backbone="tiny_cnn", lora_rank=4))
    with pytest.raises(ImportError, match=r'pip install "lpft\[lora\]"'):
        LoRA(4).setup(_model("tiny_cnn"))
    assert resolve_config(RunConfig(method="ft", backbone="tiny_cnn", ssf=True)).ssf  # SSF needs no peft


@pytest.mark.parametrize("option", [["--lora-rank", "4"], ["--ssf"]])
def test_run_writes_the_merged_model_as_the_selected_checkpoint(tmp_path, option):
    run = main([*TINY, "--method", "lpft", "--lr", "0.05", "--out", str(tmp_path), *option])
    hist = json.loads((run / "history.json").read_text())
    assert hist["selected_checkpoint"] == "ckpt/merged.pt" and hist["merged_from"] in ("ckpt/best.pt", "ckpt/last.pt")
    merged = torch.load(run / "ckpt" / "merged.pt")
    assert merged["epoch"] == hist["best_epoch"] >= 1
    adapted = torch.load(run / hist["merged_from"])["model"]
    pre = _model("tiny_cnn").state_dict()
    assert list(merged["model"]) == list(pre) and set(adapted) != set(pre)  # training saw the adapted model
    for k in ("running_mean", "running_var"):  # frozen BatchNorm ran in eval mode
        assert torch.equal(merged["model"][f"backbone.net.body.1.{k}"], adapted[next(
            a for a in adapted if a.endswith(f"body.1.{k}") or a.endswith(f"body.1.op.{k}"))])
    head = torch.load(run / "init_head.pt")
    assert set(head) == {"weight", "bias"} and head["weight"].shape == (10, 16) and head["weight"].device.type == "cpu"
    assert not torch.equal(head["weight"], merged["model"]["head.weight"])
    label = "lora_rank=4,lora_alpha=4.0,lora_targets=default" if option[0] == "--lora-rank" else "ssf=True"
    recs = read_records(run / "records.jsonl")
    assert {r.get("options") for r in recs if r.get("stage") is None} == {label}
    from lpft.vision.export import load_run_model

    loaded = load_run_model(run)  # export reads the selected (merged) checkpoint into the plain architecture
    assert "merged.pt" in loaded.source["model"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in merged["model"].items())


def test_interrupted_lora_run_resumes_to_the_uninterrupted_result(tmp_path):
    from lpft.vision.rundir import load_checkpoint, save_checkpoint

    argv = [*TINY, "--method", "ft", "--lr", "0.05", "--lora-rank", "4", "--out", str(tmp_path)]
    run = main(argv)  # the uninterrupted result ...
    a, want = torch.load(run / "ckpt" / "merged.pt"), read_records(run / "records.jsonl")
    (run / "records.jsonl").unlink()  # ... then "interrupted after epoch 1": last.pt is epoch 1's adapted model
    prev = load_checkpoint(run / "ckpt" / "last.prev.pt")
    assert prev["epoch"] == 1 and any(".lora_A." in k for k in prev["model"])
    save_checkpoint(prev, run / "ckpt" / "last.pt")
    save_checkpoint(prev, run / "ckpt" / "last.pt")
    (run / "ckpt" / "merged.pt").unlink()
    main([*argv, "--resume"])
    b = torch.load(run / "ckpt" / "merged.pt")
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    key = lambda rs: {(r["eval_split"], r["metric"], r["epoch"]): r["value"] for r in rs}  # noqa: E731
    assert key(read_records(run / "records.jsonl")) == key(want)
    pre = _model("tiny_cnn").state_dict()
    for k in ("running_mean", "running_var"):  # ft trains in train mode, but the frozen BatchNorm ran in eval mode
        assert torch.equal(b["model"][f"backbone.net.body.4.{k}"], pre[f"backbone.net.body.4.{k}"])
    assert not torch.equal(b["model"]["backbone.net.body.3.weight"], pre["backbone.net.body.3.weight"])  # merged


@pytest.mark.slow
def test_torchrun_gives_the_single_process_adapter_runs(tmp_path):
    """2 gloo ranks on CPU: LoRA and SSF runs equal the single-process ones (adapters set up alike on every rank,
    BatchNorm converted for DDP yet frozen in eval mode, SSF wrappers around converted BatchNorm layers)."""
    import subprocess
    import sys
    from pathlib import Path

    common = ["--limit", "160", "--epochs", "2", "--batch-size", "32", "--quiet", "--no-distortion", "--method", "ft",
              "--lr", "0.05"]
    runs = {f"{b}-{o}": ["--backbone", b, *(["--lora-rank", "4"] if o == "lora" else ["--ssf"])]
            for b in ("tiny_cnn", "tiny_clip") for o in ("lora", "ssf")}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([[*common, *a, "--out", str(tmp_path / "ddp"), "--run-id", k] for k, a in runs.items()]))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(Path(__file__).with_name("ddp_worker.py")), str(spec)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for k, a in runs.items():
        single = main([*common, *a, "--out", str(tmp_path / "single"), "--run-id", k])
        ddp = tmp_path / "ddp" / k
        acc = [{(r["eval_split"], r["epoch"]): r["value"] for r in read_records(d / "records.jsonl")
                if r["metric"] == "acc"} for d in (ddp, single)]
        assert acc[0] == pytest.approx(acc[1], abs=1e-9), k
        m_d, m_s = (torch.load(d / "ckpt" / "merged.pt")["model"] for d in (ddp, single))
        assert list(m_d) == list(m_s) and all(torch.allclose(m_d[n], m_s[n], atol=1e-6) for n in m_s), k
