"""SWA and EMA through the engine (lpft.vision.averaging): the averages themselves, BatchNorm, resume, runs."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import engine  # noqa: E402
from lpft.vision.averaging import WeightAverage  # noqa: E402
from lpft.vision.interpolate import recompute_batchnorm  # noqa: E402
from lpft.vision.modifiers import default_swa_start  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

CPU = torch.device("cpu")


class BNNet(nn.Module):
    """A small conv net with BatchNorm, parameters named ``backbone.*`` / ``head.*``."""

    def __init__(self, bn: bool = True):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4) if bn else nn.Identity(),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _model(bn=True):
    torch.manual_seed(5)
    return BNNet(bn)


def _settings(epochs=4, **kw):
    return engine.TrainSettings(lr=0.2, epochs=epochs, batch_size=16, momentum=0.9, schedule="constant", **kw)


def _params(state):
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


class Recorder(engine.TrainHook):
    """Records the weights after every optimizer step (runs after the averaging hook)."""

    name = "recorder"

    def __init__(self):
        self.steps = []

    def after_step(self, model):
        self.steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_default_swa_start_is_the_last_quarter():
    assert [default_swa_start(e) for e in (1, 2, 4, 10, 20, 50)] == [1, 2, 4, 8, 16, 38]


def test_swa_is_the_mean_of_the_epoch_weights_then_batchnorm_is_reestimated(tmp_path):
    ds = _data()
    model = _model()
    per_epoch = {}
    avg = WeightAverage("swa", epochs=4, swa_start_epoch=2, bn_set=ds, batch_size=16, device=CPU)
    res = engine.train(model, ds, ds, _settings(), device=CPU, ckpt_dir=tmp_path, progress=False, hooks=[avg],
                       on_epoch_end=lambda e, row: per_epoch.__setitem__(e, {k: v.clone() for k, v in
                                                                             model.state_dict().items()}))
    assert avg.n_averaged == 3 and [h.get("n_averaged") for h in res.history[1:]] == [0, 1, 2, 3]
    got = _params(res.best_state)
    for k, v in got.items():  # by hand: the mean of the weights after epochs 2, 3, 4
        assert torch.allclose(v, sum(per_epoch[e][k] for e in (2, 3, 4)) / 3, atol=1e-6), k
    assert not torch.allclose(got["head.weight"], per_epoch[4]["head.weight"])  # an average, not the last epoch
    # BatchNorm statistics: those of the averaged weights on the BN set, not the last model's
    check = _model()
    check.load_state_dict(res.best_state)
    recompute_batchnorm(check, ds, batch_size=16, device=CPU)
    for k in ("backbone.1.running_mean", "backbone.1.running_var"):
        assert torch.allclose(res.best_state[k], check.state_dict()[k], atol=1e-6)
        assert not torch.allclose(res.best_state[k], per_epoch[4][k])
    # the result is saved, named in the history and is the run's selection
    assert res.selected_checkpoint == "averaged.pt" and res.best_epoch == 4
    saved = torch.load(tmp_path / "averaged.pt")
    assert saved["epoch"] == 4 and all(torch.equal(saved["model"][k], v) for k, v in res.best_state.items())
    assert res.history[-1]["averaged_val_acc"] == res.best_val_acc


def test_ema_follows_its_recursion_and_decay_zero_is_the_last_weights(tmp_path):
    ds = _data()
    for decay in (0.0, 0.7):
        model, rec = _model(bn=False), Recorder()
        avg = WeightAverage("ema", epochs=2, ema_decay=decay)
        res = engine.train(model, ds, ds, _settings(epochs=2), device=CPU, ckpt_dir=tmp_path / str(decay),
                           progress=False, hooks=[avg, rec])
        ema = dict(rec.steps[0])  # the first update copies the weights
        for w in rec.steps[1:]:
            ema = {k: decay * ema[k] + (1 - decay) * w[k] for k in ema}
        for k, v in _params(res.best_state).items():
            assert torch.allclose(v, ema[k], atol=1e-6), (decay, k)
        if decay == 0.0:
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in res.best_state.items())


def test_lpft_style_frozen_batchnorm_keeps_the_statistics(tmp_path):
    ds = _data()
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    avg = WeightAverage("swa", epochs=2, bn_set=None)  # BatchNorm frozen (freeze_bn): nothing to re-estimate
    res = engine.train(model, ds, ds, _settings(epochs=2, freeze_bn=True), device=CPU, ckpt_dir=tmp_path,
                       progress=False, hooks=[avg])
    assert all(torch.equal(res.best_state[k], v) for k, v in before.items())


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_resume_mid_run_gives_the_uninterrupted_average(tmp_path, kind):
    ds = _data()

    def run(ckpt, resume=False, stop_after=None):
        avg = WeightAverage(kind, epochs=4, swa_start_epoch=2, ema_decay=0.9, bn_set=ds, batch_size=16, device=CPU)

        def stop(epoch, row):
            if epoch == stop_after:
                raise Interrupt

        res = engine.train(_model(), ds, ds, _settings(), device=CPU, ckpt_dir=ckpt, progress=False, hooks=[avg],
                           resume=resume, on_epoch_end=stop)
        return res, avg

    full, avg_full = run(tmp_path / "full")
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", stop_after=2)
    assert torch.load(tmp_path / "cut" / "last.pt")["hooks"]["average"]["averaged"]["n_averaged"] > 0
    resumed, avg_resumed = run(tmp_path / "cut", resume=True)
    assert avg_resumed.n_averaged == avg_full.n_averaged
    assert full.best_state.keys() == resumed.best_state.keys()
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k
    assert full.best_val_acc == resumed.best_val_acc


def test_ema_run_selects_the_average_and_records_it(tmp_path):
    run = main(["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "2", "--quiet", "--no-distortion",
                "--method", "ft", "--out", str(tmp_path), "--weight-average", "ema", "--ema-decay", "0.5"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["weight_average"] == "ema" and cfg["ema_decay"] == 0.5 and cfg["swa_start_epoch"] is None
    hist = json.loads((run / "history.json").read_text())
    assert hist["selected_checkpoint"] == "ckpt/averaged.pt" and hist["best_epoch"] == 2
    final = [r for r in read_records(run / "records.jsonl")
             if r["metric"] == "acc" and r["eval_split"] == "id_val" and r["epoch"] is None]
    assert final[0]["value"] == pytest.approx(hist["history"][-1]["averaged_val_acc"], abs=1e-9)
    assert torch.load(run / "ckpt" / "averaged.pt")["epoch"] == 2


def test_averaging_options_are_checked(tmp_path):
    base = ["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "2", "--quiet", "--method", "ft",
            "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="--swa-start-epoch applies with --weight-average swa only"):
        main([*base, "--swa-start-epoch", "1"])
    with pytest.raises(ValueError, match=r"--swa-start-epoch must be an epoch in \[1, epochs=2\]"):
        main([*base, "--weight-average", "swa", "--swa-start-epoch", "3"])
    with pytest.raises(ValueError, match=r"--ema-decay must be in \[0, 1\)"):
        main([*base, "--weight-average", "ema", "--ema-decay", "1"])
    with pytest.raises(ValueError, match="method 'wiseft' with --wiseft-finetune linear"):
        main([*base[:-4], "--backbone", "tiny_clip", "--method", "wiseft", "--wiseft-finetune", "linear",
              "--out", str(tmp_path), "--weight-average", "ema"])
