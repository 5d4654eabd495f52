"""Protocol fields end to end on tiny backbones: CLIP feature normalisation, the SGD linear probe, WiSE-FT's
linear-classifier variant and last-epoch theta_1, precision, and the selection set recorded."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.config import RunConfig, resolve_config  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

CLIP = ["--backbone", "tiny_clip", "--limit", "96", "--epochs", "2", "--quiet", "--lp-num-cs", "6", "--no-distortion"]


def _acc(recs, split, **match):
    match.setdefault("stage", None)
    hits = [r["value"] for r in recs if r["metric"] == "acc" and r["eval_split"] == split and r.get("epoch") is None
            and all(r.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (split, match, hits)
    return hits[0]


def _cached_features(out):
    blobs = [torch.load(p, weights_only=True) for p in (out / ".cache").glob("*.pt")]
    assert blobs, "no feature cache written"
    return blobs


def test_clip_features_are_raw_under_lpft_and_normalised_under_wiseft(tmp_path):
    assert resolve_config(RunConfig(method="lpft", benchmark="domainnet")).feature_norm is False
    assert resolve_config(RunConfig(method="lp", benchmark="imagenet")).feature_norm is False
    assert resolve_config(RunConfig(method="wiseft", benchmark="imagenet")).feature_norm is True
    assert resolve_config(RunConfig(method="zeroshot", benchmark="imagenet")).feature_norm is True
    run = main([*CLIP, "--method", "lp", "--out", str(tmp_path / "lpft")])
    assert json.loads((run / "config.json").read_text())["feature_norm"] is False
    for blob in _cached_features(tmp_path / "lpft"):
        norms = blob["features"].norm(dim=1)
        assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3), "LP-FT's CLIP features must be raw"
    main([*CLIP, "--method", "lp", "--protocol", "wiseft", "--out", str(tmp_path / "wise")])
    for blob in _cached_features(tmp_path / "wise"):
        norms = blob["features"].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_sgd_linear_probe_is_chosen_on_the_selection_set(tmp_path):
    run = main([*CLIP, "--method", "lp", "--lp-solver", "sgd", "--batch-size", "32", "--out", str(tmp_path)])
    lp = json.loads((run / "linear_probe.json").read_text())
    assert lp["solver"] == "sgd" and lp["lr"] in (0.01, 0.03, 0.1) and len(lp["per_lr"]) == 3
    assert lp["val_acc"] == max(p[1] for p in lp["per_lr"])
    recs = read_records(run / "records.jsonl")
    assert _acc(recs, "id_val") == pytest.approx(lp["val_acc"], abs=1e-6)
    assert {r["lp_lr"] for r in recs} == {lp["lr"]}
    cfg = resolve_config(RunConfig(method="lpft", benchmark="imagenet"))
    assert (cfg.lp_solver, cfg.lp_sgd_lrs, cfg.lp_sgd_epochs, cfg.batch_size) == ("sgd", [0.01, 0.03, 0.1], 5, 128)


def test_wiseft_linear_classifier_variant(tmp_path):
    zs = main([*CLIP, "--method", "zeroshot", "--out", str(tmp_path)])
    run = main([*CLIP, "--method", "wiseft", "--wiseft-finetune", "linear", "--alphas", "0,0.5,1",
                "--out", str(tmp_path)])
    assert run.name.startswith("digits-tiny_clip-wiseft-lc-")
    recs, zrecs = read_records(run / "records.jsonl"), read_records(zs / "records.jsonl")
    final = [r for r in recs if r["metric"] == "acc" and r["epoch"] is None]
    assert final and all(r["wiseft_finetune"] == "linear" for r in final)
    for s in ("id_test", "typeset"):  # alpha = 0 is the zero-shot head exactly
        assert _acc(recs, s, alpha=0.0) == pytest.approx(_acc(zrecs, s), abs=1e-9)
    hist = json.loads((run / "history.json").read_text())
    assert hist["select_epoch"] == "last" and hist["best_epoch"] == 2  # WiSE-FT keeps the last epoch
    assert _acc(recs, "id_val", alpha=1.0) == pytest.approx(hist["history"][-1]["val_acc"], abs=1e-6)


def test_wiseft_theta1_is_the_last_epoch_under_the_wiseft_protocol(tmp_path):
    run = main([*CLIP, "--method", "wiseft", "--alphas", "0,1", "--epochs", "3", "--out", str(tmp_path)])
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["protocol"], cfg["select_epoch"], cfg["optimizer"]) == ("wiseft", "last", "adamw")
    recs = read_records(run / "records.jsonl")
    last = [r for r in recs if r["metric"] == "acc" and r["epoch"] == 3 and r["eval_split"] == "id_val"]
    assert len(last) == 1
    assert _acc(recs, "id_val", alpha=1.0) == pytest.approx(last[0]["value"], abs=1e-6)
    assert not (run / "ckpt" / "best.pt").exists()  # nothing is selected by validation


def test_bf16_is_opt_in_and_recorded(tmp_path):
    assert resolve_config(RunConfig(method="ft", benchmark="living17")).precision == "fp32"
    run = main([*CLIP, "--method", "ft", "--precision", "bf16", "--epochs", "1", "--out", str(tmp_path)])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["precision"] == "bf16"
    recs = read_records(run / "records.jsonl")
    assert {r["precision"] for r in recs} == {"bf16"}
    assert all(0.0 <= r["value"] <= 1.0 for r in recs if r["metric"] == "acc")


def test_selection_actually_used_is_recorded(tmp_path):
    run = main([*CLIP, "--method", "lp", "--out", str(tmp_path)])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["selection"] == "paper"  # requested (the preset) ...
    assert cfg["split_info"]["id_val"]["selection"] == "heldout"  # ... digits has no official selection set
    assert {r["selection"] for r in read_records(run / "records.jsonl")} == {"heldout"}


@pytest.mark.parametrize("method", ["lp", "ft"])
def test_every_evaluation_records_calibration(tmp_path, method):
    from lpft.vision.calibration import calibration_metrics

    run = main([*CLIP, "--method", method, "--epochs", "1", "--out", str(tmp_path)])
    recs = [r for r in read_records(run / "records.jsonl") if r.get("epoch") is None and r.get("stage") is None]
    by = {(r["eval_split"], r["metric"]): r["value"] for r in recs}
    for split in ("id_val", "id_test", "typeset", "corrupted"):
        assert 0.0 <= by[(split, "ece")] <= 1.0 and by[(split, "nll")] > 0.0
    if method == "lp":  # recompute from the saved head and cached features: the same numbers
        head = torch.load(run / "head.pt", weights_only=True)
        for blob in _cached_features(tmp_path):
            x, y = blob["features"], blob["labels"]
            cal = calibration_metrics(x @ head["weight"].T + head["bias"], y)
            matches = [s for s in ("id_test", "typeset", "corrupted")
                       if by[(s, "nll")] == pytest.approx(cal["nll"], rel=1e-6)]
            if matches:
                assert by[(matches[0], "ece")] == pytest.approx(cal["ece"], abs=1e-9)
                break
        else:
            raise AssertionError("no evaluation split's NLL matches the saved head on its cached features")
