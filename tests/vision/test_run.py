"""End-to-end runs of every method on tiny backbones and the offline digits benchmark (seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import engine  # noqa: E402
from lpft.vision.config import RunConfig, default_run_id, resolve_config  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

TINY = ["--backbone", "tiny_cnn", "--limit", "96", "--epochs", "2", "--quiet", "--lp-num-cs", "6"]


def _run(tmp_path, *extra):
    return main([*TINY, "--out", str(tmp_path / "runs"), *extra])


def _acc(recs, split, **match):
    match.setdefault("stage", None)  # the selected model, not a stage reported on the way (LP-FT's LP)
    hits = [r["value"] for r in recs if r["metric"] == "acc" and r["eval_split"] == split and r.get("epoch") is None
            and all(r.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (split, match, hits)
    return hits[0]


@pytest.mark.parametrize("method", ["lp", "ft", "lpft"])
def test_method_end_to_end(tmp_path, method):
    run_dir = _run(tmp_path, "--method", method)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["method"] == method and cfg["backbone"] == "tiny_cnn" and cfg["benchmark"] == "digits"
    assert cfg["split_info"]["id_train"]["size"] == 96
    recs = read_records(run_dir / "records.jsonl")
    final = [r for r in recs if r["metric"] == "acc" and r["epoch"] is None]
    assert {r["eval_split"] for r in final} == {"id_val", "id_test", "typeset", "corrupted"}
    assert {r["shift"] for r in final} == {"id", "ood"}
    for r in final:
        assert 0.0 <= r["value"] <= 1.0 and r["alpha"] is None and r["seed"] == 0
        assert r["run_id"] == run_dir.name
    if method == "lp":
        assert final[0]["lr"] is None and "C" in final[0]
    else:
        assert final[0]["lr"] == cfg["lr"]
        hist = [r for r in recs if r["epoch"] is not None and r["metric"] == "acc"]
        assert [r["epoch"] for r in hist] == [0, 1, 2]
        losses = [r for r in recs if r["metric"] == "loss"]
        assert [r["epoch"] for r in losses] == [1, 2] and all(r["eval_split"] == "id_train" for r in losses)
        assert (run_dir / "ckpt" / "best.pt").exists() and (run_dir / "ckpt" / "last.pt").exists()
        # the selected model is the best ID-val epoch, never an OOD-selected one
        best = max(hist[1:], key=lambda r: r["value"])  # epoch 0 is logged, not a candidate
        assert _acc(recs, "id_val") == pytest.approx(best["value"], abs=1e-6)


def test_lp_leaves_backbone_untouched_and_rerun_uses_cache(tmp_path, monkeypatch):
    from lpft.vision.backbones import create_backbone

    ref = create_backbone("tiny_cnn", image_size=32, augment=False)
    calls = {"n": 0}
    orig = type(ref).forward

    def counting(self, x):
        calls["n"] += 1
        return orig(self, x)

    monkeypatch.setattr(type(ref), "forward", counting)
    run1 = _run(tmp_path, "--method", "lp", "--run-id", "a")
    first = calls["n"]
    assert first > 0
    run2 = _run(tmp_path, "--method", "lp", "--run-id", "b")
    assert calls["n"] == first, "a rerun must read every feature from the cache"
    r1, r2 = read_records(run1 / "records.jsonl"), read_records(run2 / "records.jsonl")
    assert [r["value"] for r in r1] == [r["value"] for r in r2]


def test_lpft_starts_from_exactly_the_lp_head(tmp_path):
    lp = _run(tmp_path, "--method", "lp")
    lpft = _run(tmp_path, "--method", "lpft", "--epochs", "0")
    head = torch.load(lp / "head.pt")
    model = torch.load(lpft / "ckpt" / "best.pt")["model"] if (lpft / "ckpt" / "best.pt").exists() else None
    # epochs=0: the selected model is the initial LP-FT model, whose head must equal the LP head bit for bit
    lp_recs, lpft_recs = read_records(lp / "records.jsonl"), read_records(lpft / "records.jsonl")
    for s in ("id_test", "typeset"):
        assert _acc(lpft_recs, s) == pytest.approx(_acc(lp_recs, s), abs=1e-9)
        # LP-FT reports its LP stage: the LP run's numbers exactly
        assert _acc(lpft_recs, s, stage="lp") == pytest.approx(_acc(lp_recs, s), abs=1e-9)
    assert json.loads((lp / "linear_probe.json").read_text())["C"] == json.loads((lpft / "linear_probe.json").read_text())["C"]
    assert model is None or torch.equal(model["head.weight"], head["weight"])


def test_lpft_head_before_training_equals_lp_head(tmp_path, monkeypatch):
    from lpft.vision import methods

    seen = {}
    orig = methods.finetune

    def spy(ctx, model, subdir="ckpt"):
        seen["w"], seen["b"] = model.head.weight.detach().clone(), model.head.bias.detach().clone()
        seen["lp"] = ctx.notes["lp_head"]
        return orig(ctx, model, subdir)

    monkeypatch.setattr(methods, "finetune", spy)
    _run(tmp_path, "--method", "lpft", "--epochs", "1")
    assert torch.equal(seen["w"], seen["lp"][0]) and torch.equal(seen["b"], seen["lp"][1])


def test_wiseft_endpoints_bn_variants(tmp_path):
    lp = _run(tmp_path, "--method", "lp")
    run_dir = _run(tmp_path, "--method", "wiseft", "--alphas", "0,0.5,1")
    recs = read_records(run_dir / "records.jsonl")
    lp_recs = read_records(lp / "records.jsonl")
    for s in ("id_val", "id_test", "typeset", "corrupted"):
        # alpha = 0 is the LP model exactly (theta_0 for a non-CLIP backbone)
        assert _acc(recs, s, alpha=0.0, bn_stats="interpolated") == pytest.approx(_acc(lp_recs, s), abs=1e-9)
        for a in (0.0, 1.0):  # endpoints are not re-estimated: both variants agree exactly
            assert _acc(recs, s, alpha=a, bn_stats="interpolated") == _acc(recs, s, alpha=a, bn_stats="recomputed")
    assert {r["alpha"] for r in recs if r["metric"] == "acc" and r["epoch"] is None} == {0.0, 0.5, 1.0}
    # alpha = 1 is the fine-tuned model: its ID-val accuracy is the selected epoch's
    # WiSE-FT's theta_1 on a non-CLIP backbone (LP-FT protocol) is the best ID-val epoch
    hist = [r for r in recs if r["epoch"] is not None and r["metric"] == "acc"]
    assert _acc(recs, "id_val", alpha=1.0, bn_stats="interpolated") == pytest.approx(
        max(h["value"] for h in hist if h["epoch"] > 0))


def test_zeroshot_and_wiseft_on_tiny_clip(tmp_path):
    zs = main(["--backbone", "tiny_clip", "--limit", "48", "--quiet", "--out", str(tmp_path / "runs"),
               "--method", "zeroshot"])
    recs = read_records(zs / "records.jsonl")
    assert {r["eval_split"] for r in recs} == {"id_val", "id_test", "typeset", "corrupted"}
    wl = main(["--backbone", "tiny_clip", "--limit", "48", "--quiet", "--out", str(tmp_path / "runs"),
               "--method", "wiseft", "--wiseft-finetune", "linear", "--alphas", "0,0.5,1", "--lp-num-cs", "5"])
    wrecs = read_records(wl / "records.jsonl")
    for s in ("id_test", "typeset"):  # linear WiSE-FT: alpha=0 is the zero-shot model exactly
        assert _acc(wrecs, s, alpha=0.0) == pytest.approx(_acc(recs, s), abs=1e-9)
    assert all(r.get("bn_stats") is None for r in wrecs)


def test_interpolation_endpoints_exact_and_midpoint():
    a = {"w": torch.randn(3, 4), "n": torch.tensor(5)}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(9)}
    assert torch.equal(engine.interpolate_state_dicts(a, b, 0.0)["w"], a["w"])
    assert torch.equal(engine.interpolate_state_dicts(a, b, 1.0)["w"], b["w"])
    mid = engine.interpolate_state_dicts(a, b, 0.25)
    assert torch.allclose(mid["w"], 0.75 * a["w"] + 0.25 * b["w"]) and mid["n"].item() == 5
    with pytest.raises(ValueError, match="differ in keys"):
        engine.interpolate_state_dicts(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        engine.interpolate_state_dicts(a, b, 1.5)


def test_nan_loss_stops_with_clear_message(tmp_path):
    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x.flatten(1)[:, :4]) * float("nan")

    ds = torch.utils.data.TensorDataset(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))
    s = engine.TrainSettings(lr=0.1, epochs=1, batch_size=4)
    with pytest.raises(engine.TrainingDiverged, match="loss became nan by epoch 1"):
        engine.train(NaNNet(), ds, ds, s, device=torch.device("cpu"), ckpt_dir=tmp_path, progress=False)


def test_existing_checkpoint_requires_resume(tmp_path):
    _run(tmp_path, "--method", "ft", "--epochs", "1")
    run_dir = tmp_path / "runs" / default_run_id(resolve_config(RunConfig(method="ft", backbone="tiny_cnn")))
    (run_dir / "records.jsonl").unlink()
    with pytest.raises(engine.ResumeError, match="--resume"):
        _run(tmp_path, "--method", "ft", "--epochs", "1")


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """A run killed (SIGKILL) after its first epoch and resumed equals an uninterrupted run."""
    args = [*TINY, "--method", "ft", "--epochs", "3", "--no-distortion"]
    full = main([*args, "--out", str(tmp_path / "full")])
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lpft.vision.run", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        hits = list(out.glob("*/ckpt/last.pt"))
        if hits:
            try:
                if torch.load(hits[0], weights_only=False)["epoch"] >= 1:
                    last = hits[0]
                    break
            except Exception:
                pass
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if last is None or (last.parent.parent / "records.jsonl").exists():
        pytest.skip("the run finished before it could be killed")
    assert torch.load(last, weights_only=False)["epoch"] < 3
    resumed = main([*args, "--out", str(out), "--resume"])
    a, b = read_records(full / "records.jsonl"), read_records(resumed / "records.jsonl")
    key = lambda r: (r["eval_split"], r["metric"], str(r["epoch"]))  # noqa: E731
    assert sorted((key(r), r["value"]) for r in a) == sorted((key(r), r["value"]) for r in b)
    sa = torch.load(full / "ckpt" / "best.pt")["model"]
    sb = torch.load(resumed / "ckpt" / "best.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("flag,name,valid", [
    ("--method", "sgdft", "wiseft"),
    ("--backbone", "resnet5", "efficientnet_lite0"),
    ("--benchmark", "living18", "living17"),
])
def test_unknown_names_list_valid_ones(tmp_path, flag, name, valid):
    with pytest.raises(ValueError, match="expected one of") as e:
        _run(tmp_path, flag, name)
    assert valid in str(e.value)


def test_missing_data_root_names_layout(tmp_path):
    from lpft.vision.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError) as e:
        _run(tmp_path, "--benchmark", "living17", "--data-root", str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "imagenet" in msg and "layout" in msg


def test_zeroshot_needs_clip(tmp_path):
    with pytest.raises(ValueError, match="CLIP backbone"):
        _run(tmp_path, "--method", "zeroshot")


def test_cli_entry_point_runs(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "lpft.vision.run", *TINY, "--method", "lp", "--out",
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "typeset (ood)" in out.stdout and "records.jsonl" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "lpft.vision.run", "--method", "nope"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "expected one of" in bad.stderr


def test_protocol_presets_resolve_to_the_papers_recipes():
    lpft_ft = resolve_config(RunConfig(method="ft", benchmark="living17"))
    assert (lpft_ft.optimizer, lpft_ft.momentum, lpft_ft.weight_decay, lpft_ft.schedule, lpft_ft.epochs,
            lpft_ft.lr, lpft_ft.batch_size) == ("sgd", 0.9, 0.0, "cosine_epoch", 20, 1e-3, 64)
    assert resolve_config(RunConfig(method="lpft", benchmark="living17")).freeze_bn is True
    assert resolve_config(RunConfig(method="lpft", benchmark="domainnet")).lr == 3e-7
    wise = resolve_config(RunConfig(method="wiseft", benchmark="imagenet"))
    assert (wise.backbone, wise.optimizer, wise.weight_decay, wise.warmup_steps, wise.grad_clip, wise.lr,
            wise.batch_size, wise.epochs, wise.schedule) == ("clip_vit_b16", "adamw", 0.1, 500, 1.0, 3e-5, 512, 10,
                                                            "cosine_step")
    assert wise.alphas == [round(0.1 * i, 1) for i in range(11)]
    chosen = resolve_config(RunConfig(method="ft", protocol="wiseft"))
    assert (chosen.optimizer, chosen.grad_clip, chosen.batch_size) == ("adamw", 1.0, 64)  # the digits pair batch kept
    with pytest.raises(ValueError, match="does not train"):
        resolve_config(RunConfig(method="zeroshot", backbone="tiny_clip", protocol="wiseft"))
    lp_wise = resolve_config(RunConfig(method="lp", backbone="tiny_clip", protocol="wiseft"))
    assert lp_wise.feature_norm is True and lp_wise.optimizer is None and lp_wise.lr is None


def test_learning_rate_schedules():
    lr = lambda **k: engine.learning_rate(1.0, steps_per_epoch=10, epochs=4, **k)  # noqa: E731
    assert [lr(schedule="cosine_epoch", step=0, epoch=e) for e in range(4)] == pytest.approx([1, 0.8535534, 0.5, 0.1464466])
    assert lr(schedule="cosine_step", step=0, epoch=0, warmup_steps=5) == pytest.approx(0.2)
    assert lr(schedule="cosine_step", step=5, epoch=0, warmup_steps=5) == pytest.approx(1.0)
    assert lr(schedule="cosine_step", step=39, epoch=3, warmup_steps=5) < 0.01
    with pytest.raises(ValueError, match="unknown schedule"):
        lr(schedule="step", step=0, epoch=0)


def test_summary_table_shows_the_lp_stage_and_the_wiseft_endpoints():
    from lpft.vision.records import make_record
    from lpft.vision.run import summary_table

    def r(method, split, v, **kw):
        return make_record(run_id="x", method=method, backbone="b", benchmark="digits", eval_split=split,
                           shift="id" if split.startswith("id") else "ood", metric="acc", value=v, seed=0, lr=1e-3,
                           epoch=None, **kw)

    lines = summary_table([r("lpft", "id_test", 0.99, stage="lp"), r("lpft", "id_test", 0.995),
                           r("lpft", "typeset", 0.5), r("lpft", "typeset", 0.4, stage="lp")]).splitlines()
    assert lines[1].split() == ["lp", "99.00", "40.00"] and lines[2].split() == ["lpft", "99.50", "50.00"]
    text = summary_table([r("wiseft", "id_test", v, alpha=a) for a, v in ((0.0, 0.9), (0.5, 0.95), (1.0, 0.97))])
    assert "wiseft alpha=0 (theta_0)" in text and "wiseft alpha=1 (theta_1)" in text and "alpha=0.5 " in text
