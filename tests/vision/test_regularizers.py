"""L2-SP and TPGM (lpft.vision.regularizers): exact gradients, projections, learned radii, end-to-end runs."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import engine  # noqa: E402
from lpft.vision.regularizers import L2SP, TPGM, distances, project_  # noqa: E402
from lpft.vision.run import main  # noqa: E402
from lpft.vision.surgical import Freeze  # noqa: E402

TINY = ["--backbone", "tiny_cnn", "--limit", "96", "--epochs", "2", "--quiet", "--no-distortion", "--method", "ft"]


class Net(nn.Module):
    """A Classifier-shaped model: parameters named ``backbone.*`` and ``head.*``."""

    def __init__(self, d: int = 8, k: int = 2):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.head = nn.Linear(d, k)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x.flatten(1))))


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_l2sp_gradient_and_value_are_the_analytic_ones():
    torch.manual_seed(0)
    model = Net()
    alpha, beta = 0.3, 0.2
    hook = L2SP(alpha, beta)
    hook.setup(model)
    w0 = _state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    penalty = hook.loss(model)
    expected = 0.0
    for n, p in model.named_parameters():
        p = p.detach()
        expected += (alpha if n.startswith("backbone") else 0.0) / 2 * float(((p - w0[n]) ** 2).sum())
        expected += (beta if n.startswith("head") else 0.0) / 2 * float((p ** 2).sum())
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for n, p in model.named_parameters():
        want = alpha * (p.detach() - w0[n]) if n.startswith("backbone") else beta * p.detach()
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=0), n


def test_l2sp_is_added_once_per_step_with_gradient_accumulation(tmp_path):
    """One SGD step with L2-SP moves every weight by lr * (mean CE gradient + penalty gradient), whatever the
    number of accumulation steps (the penalty is added once per optimizer step)."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 8), torch.randint(0, 2, (8,))
    ds = torch.utils.data.TensorDataset(x, y)
    init = Net()  # w0 is the initial model: the alpha term's gradient is 0 at the first step, beta's is not
    results = []
    for accum in (1, 4):
        model = Net()
        model.load_state_dict(init.state_dict())
        s = engine.TrainSettings(lr=0.1, epochs=1, batch_size=8, momentum=0.0, schedule="constant", grad_accum=accum)
        engine.train(model, ds, ds, s, device=torch.device("cpu"), ckpt_dir=tmp_path / f"a{accum}", progress=False,
                     hooks=[L2SP(0.0, 0.5)])
        results.append(_state(model))
    ref = Net()
    ref.load_state_dict(init.state_dict())
    loss = nn.functional.cross_entropy(ref(x), y) + 0.5 / 2 * sum((p ** 2).sum() for p in ref.head.parameters())
    loss.backward()
    for n, p in ref.named_parameters():
        want = p.detach() - 0.1 * p.grad
        for got in results:
            assert torch.allclose(got[n], want, atol=1e-6), n


def _backbone_distance(state, w0):
    return sum(float(((state[k].float() - w0[k].float()) ** 2).sum()) for k in w0) ** 0.5


def test_large_l2sp_alpha_keeps_the_backbone_near_the_pretrained_weights(tmp_path):
    from lpft.vision.backbones import Classifier, create_backbone

    args = [*TINY, "--out", str(tmp_path), "--lr", "0.1", "--epochs", "3", "--limit", "64"]
    plain = main([*args, "--run-id", "plain"])
    l2sp = main([*args, "--run-id", "l2sp", "--l2sp-alpha", "10"])  # lr * alpha = 1: a strong, stable pull
    engine.seed_everything(0)  # as lpft.vision.run builds the pretrained backbone
    pre = Classifier(create_backbone("tiny_cnn", image_size=32, augment=False), 10).state_dict()
    w0 = {k: v for k, v in pre.items() if k.startswith("backbone.") and v.is_floating_point() and "running" not in k}
    d_plain = _backbone_distance(torch.load(plain / "ckpt" / "last.pt")["model"], w0)
    d_l2sp = _backbone_distance(torch.load(l2sp / "ckpt" / "last.pt")["model"], w0)
    assert d_plain > 0 and d_l2sp < 0.3 * d_plain, (d_l2sp, d_plain)


# --- TPGM -----------------------------------------------------------------------------------------------
def test_projection_stays_within_each_radius_and_large_radii_are_the_identity():
    torch.manual_seed(2)
    model = Net()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("backbone")}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    d = distances(model, w0)
    before = _state(model)
    project_(model, w0, {n: 10 * float(v) for n, v in d.items()})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # bit-identical
    radii = {n: 0.3 * float(v) for n, v in d.items()}
    project_(model, w0, radii)
    params = dict(model.named_parameters())
    for n, g in radii.items():
        delta, old = params[n].detach() - w0[n], before[n] - w0[n]
        assert float(delta.norm()) <= g * (1 + 1e-6)
        assert torch.allclose(delta, 0.3 * old, atol=1e-6)  # pulled straight towards w0
    assert torch.equal(params["head.weight"].detach(), before["head.weight"])  # the head is not projected


def _overfit_data():
    """Training labels are noise; validation labels are the pretrained model's own predictions."""
    torch.manual_seed(3)
    pretrained = Net()
    xt, xv = torch.randn(64, 8), torch.randn(64, 8)
    yt = torch.randint(0, 2, (64,))
    with torch.no_grad():
        yv = pretrained(xv).argmax(1)
    return pretrained, torch.utils.data.TensorDataset(xt, yt), torch.utils.data.TensorDataset(xv, yv)


def _fit(pretrained, train, val, ckpt, hooks):
    model = Net()
    model.load_state_dict(pretrained.state_dict())
    s = engine.TrainSettings(lr=0.5, epochs=3, batch_size=16, momentum=0.9, schedule="constant")
    res = engine.train(model, train, val, s, device=torch.device("cpu"), ckpt_dir=ckpt, progress=False, hooks=hooks)
    return model, res


def test_tpgm_learns_radii_that_pull_an_overfitting_model_back(tmp_path):
    pretrained, train, val = _overfit_data()
    w0 = {n: p.detach().clone() for n, p in pretrained.named_parameters() if n.startswith("backbone")}
    free, _ = _fit(pretrained, train, val, tmp_path / "free", [Freeze("-head")])
    tpgm = TPGM(val, batch_size=32, device=torch.device("cpu"), steps=40, lr=0.05)
    model, res = _fit(pretrained, train, val, tmp_path / "tpgm", [Freeze("-head"), tpgm])
    ratios = [h["tpgm_mean_ratio"] for h in res.history[1:]]
    assert len(ratios) == 3 and min(ratios) < 0.9, ratios  # the radii moved from their start (ratio 1)
    d = distances(model, w0)
    assert set(tpgm.last_radii) == set(w0)
    for n, g in tpgm.last_radii.items():  # the final weights lie in the last learned balls
        assert float(d[n]) <= g * (1 + 1e-5) + 1e-7
    assert sum(float(v) for v in d.values()) < sum(float(v) for v in distances(free, w0).values())
    assert res.history[-1]["val_acc"] >= max(h["val_acc"] for h in res.history[1:]) - 0.1


def test_tpgm_learning_with_an_optimal_point_keeps_it(tmp_path):
    """When w is w0 + a step that lowers the validation loss, the radius does not shrink it away."""
    pretrained, _, val = _overfit_data()
    model = Net()
    model.load_state_dict(pretrained.state_dict())
    tpgm = TPGM(val, batch_size=32, device=torch.device("cpu"), steps=20, lr=0.05)
    tpgm.setup(model)
    # one gradient step on the validation loss itself: shrinking it back towards w0 can only hurt
    x, y = val.tensors
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if n.startswith("backbone")])
    with torch.no_grad():
        for (n, p), g in zip([(n, p) for n, p in model.named_parameters() if n.startswith("backbone")], grads):
            p.sub_(0.05 * g)
    d0 = distances(model, tpgm.w0)
    radii, _ = tpgm.learn(model, epoch=1)
    for n in d0:
        assert float(radii[n]) >= 0.9 * float(d0[n]), n


def test_tpgm_and_l2sp_need_a_fine_tuning_method(tmp_path):
    with pytest.raises(ValueError, match="modify end-to-end fine-tuning"):
        main([*TINY[:-2], "--method", "lp", "--out", str(tmp_path), "--tpgm"])
    with pytest.raises(ValueError, match="--tpgm-steps applies with --tpgm only"):
        main([*TINY, "--out", str(tmp_path), "--tpgm-steps", "3"])
    with pytest.raises(ValueError, match="--l2sp-alpha must be >= 0"):
        main([*TINY, "--out", str(tmp_path), "--l2sp-alpha", "-1"])


@pytest.mark.slow
def test_torchrun_with_every_option_gives_the_single_process_records(tmp_path):
    """2 gloo ranks: L2-SP + freeze-embed + TPGM + SWA (tiny_cnn FT) and surgical + EMA + L2-SP (tiny_clip LP-FT)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from lpft.vision.records import read_records

    common = ["--limit", "160", "--epochs", "2", "--batch-size", "32", "--quiet", "--lp-num-cs", "6",
              "--no-distortion"]
    runs = {"cnn": ["--backbone", "tiny_cnn", "--method", "ft", "--l2sp-alpha", "0.5", "--l2sp-beta", "0.01",
                    "--freeze-embed", "--tpgm", "--tpgm-steps", "4", "--weight-average", "swa"],
            "clip": ["--backbone", "tiny_clip", "--method", "lpft", "--train-blocks", "last", "--weight-average",
                     "ema", "--l2sp-alpha", "1"]}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([[*common, *a, "--out", str(tmp_path / "ddp"), "--run-id", k] for k, a in runs.items()]))
    worker = Path(__file__).with_name("ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(worker), str(spec)], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for k, a in runs.items():
        single = main([*common, *a, "--out", str(tmp_path / "single"), "--run-id", k])
        key = lambda r: (r["eval_split"], r["metric"], r["epoch"], r.get("stage"))  # noqa: E731
        got = {key(r): r["value"] for r in read_records(tmp_path / "ddp" / k / "records.jsonl")}
        want = {key(r): r["value"] for r in read_records(single / "records.jsonl")}
        assert got.keys() == want.keys()
        for kk, v in want.items():  # accuracies exactly (1/160 apart); losses reduced over the ranks
            assert got[kk] == pytest.approx(v, rel=1e-4, abs=1e-9), (k, kk)


def test_table_keeps_runs_with_other_options_apart(tmp_path):
    """An L2-SP run and a plain run of the same method and lr are two rows, never one pooled cell."""
    from lpft.vision.run import main
    from lpft.vision.table import build_table

    base = ["--backbone", "tiny_cnn", "--method", "ft", "--limit", "48", "--epochs", "1", "--quiet",
            "--no-distortion", "--out", str(tmp_path)]
    main([*base, "--run-id", "plain"])
    main([*base, "--run-id", "l2sp", "--l2sp-alpha", "0.1"])
    labels = sorted(r.label for r in build_table(tmp_path))
    assert any("l2sp_alpha=0.1" in lab for lab in labels) and any("l2sp" not in lab for lab in labels), labels
