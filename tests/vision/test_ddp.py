"""torchrun (2 gloo ranks on CPU) gives the single-process answer; a killed rank resumes to the same result.

Each check would have caught a finding of the review of commit a907381: the CLIP text tower under DDP (1),
the global batch (2), rank-0-only atomic writes (6), per-rank BatchNorm statistics, losses and seeds (7).
"""

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

from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

WORKER = Path(__file__).with_name("ddp_worker.py")
# 160 training images at global batch 32: 5 optimizer steps per epoch, 10 over the two epochs
COMMON = ["--limit", "160", "--epochs", "2", "--batch-size", "32", "--quiet", "--lp-num-cs", "6", "--no-distortion"]
RUNS = {  # the tiny backbones' preset learning rates
    "cnn-ft": ["--backbone", "tiny_cnn", "--method", "ft"],
    "cnn-lpft": ["--backbone", "tiny_cnn", "--method", "lpft"],
    "clip-ft": ["--backbone", "tiny_clip", "--method", "ft"],
    "clip-lpft": ["--backbone", "tiny_clip", "--method", "lpft"],
    # WiSE-FT protocol: AdamW, warm-up, clipping after the all-reduce, the last epoch as theta_1
    "clip-wiseft": ["--backbone", "tiny_clip", "--method", "wiseft", "--alphas", "0,0.5,1"],
}


def _torchrun(tmp_path: Path, argvs: list[list[str]], nproc: int = 2, timeout: int = 600, wait: bool = True):
    spec = tmp_path / f"spec{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(argvs))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(spec)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _final(recs):
    return {(r["eval_split"], r.get("alpha"), r.get("bn_stats"), r.get("stage")): r["value"]
            for r in recs if r["metric"] == "acc" and r.get("epoch") is None}


def _losses(recs):
    return [r["value"] for r in sorted((r for r in recs if r["metric"] == "loss"), key=lambda r: r["epoch"])]


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    argvs = [[*COMMON, *a, "--out", str(tmp / "ddp"), "--run-id", k] for k, a in RUNS.items()]
    _torchrun(tmp, [*argvs, {"bn_check": str(tmp / "bn")}])
    for k, a in RUNS.items():
        torch.set_num_threads(2)
        main([*COMMON, *a, "--out", str(tmp / "single"), "--run-id", k])
    return tmp


@pytest.mark.parametrize("name", list(RUNS))
def test_torchrun_gives_the_single_process_records(ddp_and_single, name):
    ddp = read_records(ddp_and_single / "ddp" / name / "records.jsonl")
    single = read_records(ddp_and_single / "single" / name / "records.jsonl")
    acc_d, acc_s = _final(ddp), _final(single)
    assert acc_d.keys() == acc_s.keys() and acc_d
    for k in acc_s:  # identical accuracies (a one-image difference would be >= 1/160)
        assert acc_d[k] == pytest.approx(acc_s[k], abs=1e-9), k
    hist_d = [r["value"] for r in ddp if r["metric"] == "acc" and r.get("epoch") is not None]
    hist_s = [r["value"] for r in single if r["metric"] == "acc" and r.get("epoch") is not None]
    assert hist_d == pytest.approx(hist_s, abs=1e-9)  # same number of steps, same model at every epoch
    loss_d, loss_s = _losses(ddp), _losses(single)
    assert len(loss_d) == len(loss_s) == 2
    assert loss_d == pytest.approx(loss_s, rel=1e-4)  # the loss is reduced over both ranks


def test_batchnorm_reestimation_is_the_single_process_one_on_every_rank(ddp_and_single):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.bn_check(str(ddp_and_single / "bn_single"))
    single = torch.load(ddp_and_single / "bn_single.rank0.pt")
    for r in (0, 1):
        ranked = torch.load(ddp_and_single / f"bn.rank{r}.pt")
        assert ranked.keys() == single.keys() and single
        for k in single:
            assert torch.allclose(ranked[k], single[k], rtol=1e-6, atol=1e-7), (r, k)


def test_torchrun_records_the_global_batch_and_writes_only_atomically(ddp_and_single):
    for name in RUNS:
        run_dir = ddp_and_single / "ddp" / name
        cfg = json.loads((run_dir / "config.json").read_text())
        assert cfg["batch_size"] == 32
        assert cfg["distributed"] == {"world_size": 2, "per_rank_batch": 16, "grad_accum": 1}
        assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
        assert not (run_dir / ".lock").exists()
    single = json.loads((ddp_and_single / "single" / "cnn-ft" / "config.json").read_text())
    assert single["distributed"] == {"world_size": 1, "per_rank_batch": 32, "grad_accum": 1}


def test_clip_checkpoints_hold_no_text_tower(ddp_and_single):
    ck = torch.load(ddp_and_single / "ddp" / "clip-ft" / "ckpt" / "last.pt", weights_only=True)
    keys = list(ck["model"])
    assert keys and all(k.startswith(("backbone.visual.", "head.")) for k in keys), keys[:5]


def test_grad_accumulation_gives_the_same_records(tmp_path, ddp_and_single):
    name = "clip-lpft"
    run = main([*COMMON, *RUNS[name], "--out", str(tmp_path), "--run-id", name, "--grad-accum", "4"])
    accum, single = read_records(run / "records.jsonl"), read_records(ddp_and_single / "single" / name / "records.jsonl")
    assert _final(accum) == pytest.approx(_final(single), abs=1e-9)
    assert _losses(accum) == pytest.approx(_losses(single), rel=1e-4)


def test_uneven_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="divisible by world_size x grad_accum"):
        main([*COMMON, *RUNS["cnn-ft"], "--out", str(tmp_path), "--grad-accum", "5"])


def test_killed_rank_resumes_to_the_uninterrupted_result(tmp_path, ddp_and_single):
    name = "cnn-ft"
    argv = [*COMMON, *RUNS[name], "--epochs", "3", "--out", str(tmp_path), "--run-id", name]
    ref = main([*argv, "--out", str(tmp_path / "ref")])
    proc = _torchrun(tmp_path, [argv], wait=False)
    last = tmp_path / name / "ckpt" / "last.pt"
    t0 = time.time()
    while not last.exists() and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stdout.read() if proc.poll() is not None else "no checkpoint after 300 s"
    # SIGKILL one rank (a child of the torchrun agent); the agent then tears the job down
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no rank processes found"
    os.kill(int(children[-1]), signal.SIGKILL)
    proc.wait(timeout=120)
    assert not (tmp_path / name / "records.jsonl").exists(), "the run finished before the kill"
    _torchrun(tmp_path, [[*argv, "--resume"]])
    resumed = read_records(tmp_path / name / "records.jsonl")
    uninterrupted = read_records(ref / "records.jsonl")
    assert _final(resumed) == pytest.approx(_final(uninterrupted), abs=1e-9)
    assert _losses(resumed) == pytest.approx(_losses(uninterrupted), rel=1e-4)
