"""TensorBoard event files per epoch when tensorboard is installed; nothing breaks without it."""

from __future__ import annotations

import builtins
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import tboard  # noqa: E402
from lpft.vision.run import main  # noqa: E402

TINY = ["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "2", "--quiet", "--no-distortion", "--method", "ft"]


def test_training_writes_loss_lr_and_val_accuracy_per_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = main([*TINY, "--out", str(tmp_path)])
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/id_acc"} <= set(tags)
    val = [(e.step, e.value) for e in acc.Scalars("val/id_acc")]
    import json

    hist = json.loads((run / "history.json").read_text())["history"]
    assert val == [(h["epoch"], pytest.approx(h["val_acc"], abs=1e-6)) for h in hist[1:]]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_without_tensorboard_nothing_breaks(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert not tboard.tensorboard_available()
    run = main([*TINY, "--out", str(tmp_path)])
    assert (run / "records.jsonl").exists() and not (run / "tensorboard").exists()
