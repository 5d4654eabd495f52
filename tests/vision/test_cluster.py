"""lpft.vision.cluster: sweeps as submitit jobs (local executor, real digits runs), requeue with --resume,
torchrun variables from the job environment, Slurm parameters, and ``--status``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # inherited by the job processes

from lpft.vision import cluster  # noqa: E402
from lpft.vision.cluster import ClusterOptions, RunJob, export_torch_distributed_env, make_executor  # noqa: E402
from lpft.vision.rundir import RunLock  # noqa: E402
from lpft.vision.sweep import main, plan_sweep  # noqa: E402

RUN_FLAGS = ["--limit", "40", "--epochs", "1", "--quiet", "--no-distortion", "--lp-num-cs", "3"]
BASE = ["--benchmark", "digits", "--backbone", "tiny_cnn", "--seeds", "0", "--lrs", "preset"]
SWEEP = [*BASE, "--methods", "lp,ft"]


def _acc(run_dir: Path) -> dict:
    recs = [json.loads(ln) for ln in (run_dir / "records.jsonl").read_text().splitlines()]
    return {(r["method"], r["eval_split"], r.get("alpha"), r.get("epoch")): r["value"]
            for r in recs if r["metric"] == "acc"}


def _plan(out, methods=("lp", "ft"), extra=()):
    return plan_sweep("digits", "tiny_cnn", list(methods), [0], str(out), "preset", [*RUN_FLAGS, *extra])


@pytest.fixture(scope="module")
def inline_runs(tmp_path_factory):
    """``inline_runs(*methods)``: the smoke sweep's runs of those methods, run inline in this process once (the
    reference records); returns their runs folder."""
    out = tmp_path_factory.mktemp("inline") / "runs"

    def get(*methods):
        main([*BASE, "--methods", ",".join(methods), "--out", str(out), *RUN_FLAGS])
        assert all(r.is_complete() for r in _plan(out, methods))
        return out

    return get


# --- end to end through submitit's local executor ------------------------------------------------------------
@pytest.mark.slow
def test_local_sweep_writes_the_same_records_as_inline(inline_runs, tmp_path, capsys):
    """Two jobs at once through the local executor; records, job manifest and --status agree with inline."""
    reference = inline_runs("lp", "ft")
    out = tmp_path / "runs"
    status = main([*SWEEP, "--out", str(out), "--executor", "local", "--array-parallelism", "2", *RUN_FLAGS])
    assert sorted(status["done"]) == sorted(status["submitted"]) and len(status["done"]) == 2, status
    assert not status["failed"]
    manifest = cluster.read_manifest(out / ".submitit")
    for r in _plan(out):
        inline = _acc(reference / r.run_id)
        assert inline and _acc(r.run_dir) == inline  # the same accuracies, split by split
        assert manifest[r.run_id]["executor"] == "local" and manifest[r.run_id]["argv"] == list(r.argv)
        assert not (r.run_dir / ".lock").exists()  # released at the end of the job
    capsys.readouterr()
    states = main([*SWEEP, "--out", str(out), "--status", *RUN_FLAGS])
    assert sorted(states["done"]) == sorted(status["done"]) and list(states) == ["done"]
    table = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1] for ln in table.splitlines() if ln.startswith("digits-")}
    assert rows == {rid: "done" for rid in status["done"]}
    again = main([*SWEEP, "--out", str(out), "--executor", "local", *RUN_FLAGS])  # nothing left to submit
    assert again["submitted"] == [] and sorted(again["skipped"]) == sorted(status["done"])


def test_failing_job_shows_as_failed_with_its_error(tmp_path, capsys):
    out = tmp_path / "runs"
    bad = [*RUN_FLAGS, "--weights", str(tmp_path / "no-such-weights.pt")]  # fails inside the job, not at planning
    status = main([*BASE, "--methods", "ft", "--out", str(out),
                   "--executor", "local", *bad])
    rid = status["submitted"][0]
    assert status["failed"] == [rid] and status["done"] == []
    capsys.readouterr()
    states = main([*BASE, "--methods", "ft,lp", "--out", str(out),
                   "--status", *bad])
    assert states["failed"] == [rid] and len(states["not started"]) == 1
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith(rid))
    assert "failed" in line and "no-such-weights.pt" in line and "Error" in line  # the error line itself
    assert f"--- {rid}: last lines of job" in text and "Traceback" not in line
    tail = text.split(f"--- {rid}: last lines of job", 1)[1].splitlines()[1:]
    assert 0 < len(tail) <= 10 and any("no-such-weights.pt" in ln for ln in tail)


def test_checkpoint_requeues_the_same_run_with_resume(tmp_path):
    job = RunJob(["--method", "ft", "--out", str(tmp_path)], "rid")
    sub = job.checkpoint()
    assert isinstance(sub, submitit.helpers.DelayedSubmission) and isinstance(sub.function, RunJob)
    assert sub.function.argv == ("--method", "ft", "--out", str(tmp_path), "--resume")
    assert sub.function.checkpoint().function.argv == sub.function.argv  # --resume added once
    sub.dump(tmp_path / "sub.pkl")  # what submitit writes for the requeued job
    back = submitit.helpers.DelayedSubmission.load(tmp_path / "sub.pkl")
    assert back.function.argv[-1] == "--resume" and back.function.run_id == "rid"


@pytest.mark.slow
def test_interrupted_run_is_resumed_through_the_executor(inline_runs, tmp_path, capsys):
    """A run dir with ckpt/last.pt but no records is submitted with --resume and completes through the local
    executor with the records of the uninterrupted inline run."""
    out = tmp_path / "runs"
    [r] = _plan(out, methods=("ft",))
    shutil.copytree(inline_runs("ft") / r.run_id, r.run_dir)
    reference = _acc(r.run_dir)
    (r.run_dir / "records.jsonl").unlink()  # checkpoints, config, no records: an interrupted run
    assert (r.run_dir / "ckpt" / "last.pt").exists()
    capsys.readouterr()
    states = main([*BASE, "--methods", "ft", "--out", str(out), "--status",
                   *RUN_FLAGS])
    assert states == {"interrupted": [r.run_id]}
    status = main([*BASE, "--methods", "ft", "--out", str(out),
                   "--executor", "local", *RUN_FLAGS])
    assert status["done"] == [r.run_id]
    assert cluster.read_manifest(out / ".submitit")[r.run_id]["argv"][-1] == "--resume"
    assert _acc(r.run_dir) == reference


@pytest.mark.slow
def test_preempted_job_requeues_itself_and_finishes(inline_runs, tmp_path):
    """A real preemption signal (SIGUSR2) mid-run: submitit calls RunJob.checkpoint, the job restarts with
    --resume and ends with the same records as an uninterrupted run."""
    out = tmp_path / "runs"
    [r] = _plan(out, methods=("ft",))
    ex = make_executor(ClusterOptions(executor="local"), out / ".submitit")
    job = ex.submit(RunJob(r.launch_argv(), r.run_id))
    deadline = time.time() + 120
    while not (r.run_dir / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    holder = json.loads((r.run_dir / ".lock").read_text())  # the task process (rank 0) holds the lock
    os.kill(holder["pid"], signal.SIGUSR2)
    job.wait()
    assert job.state == "FINISHED" and Path(job.result()) == r.run_dir
    log = Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    assert "Calling checkpoint method" in log and "Requeued" in log
    assert submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle).function.argv[-1] == "--resume"
    assert _acc(r.run_dir) == _acc(inline_runs("ft") / r.run_id)


@pytest.mark.slow
def test_two_task_job_runs_distributed(tmp_path):
    """--gpus-per-node 2: one task per GPU; the tasks find each other through the torchrun variables set from the
    job environment (on a CPU-only machine they fall back to CPU and the gloo backend)."""
    out = tmp_path / "runs"
    status = main([*BASE, "--methods", "ft", "--out", str(out), "--executor", "local", "--gpus-per-node", "2",
                   *RUN_FLAGS])
    [r] = _plan(out, methods=("ft",))
    assert status["done"] == [r.run_id], status
    assert json.loads((r.run_dir / "config.json").read_text())["distributed"]["world_size"] == 2
    jid = cluster.read_manifest(out / ".submitit")[r.run_id]["job_id"]
    assert (out / ".submitit" / f"{jid}_0_log.out").exists() and (out / ".submitit" / f"{jid}_1_log.out").exists()


# --- pieces -------------------------------------------------------------------------------------------------
def _local_job_env(monkeypatch, ntasks, rank, job_id="4242"):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "CUDA_VISIBLE_DEVICES"):
        # setenv first so that monkeypatch restores the original state of variables the export will set
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for k, v in dict(NTASKS=ntasks, JOB_NUM_NODES=1, NODEID=0, GLOBALID=rank, LOCALID=rank, JOB_ID=job_id).items():
        monkeypatch.setenv(f"SUBMITIT_LOCAL_{k}", str(v))


def test_torchrun_variables_come_from_the_job_environment(monkeypatch):
    _local_job_env(monkeypatch, ntasks=2, rank=1)
    env = export_torch_distributed_env()
    assert env is not None
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("1", "1", "2")
    assert os.environ["MASTER_ADDR"] == socket.gethostname() and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # every task sees the node's GPUs; rank picks cuda:LOCAL_RANK
    port = os.environ["MASTER_PORT"]
    _local_job_env(monkeypatch, ntasks=2, rank=0)
    assert export_torch_distributed_env()["MASTER_PORT"] == port  # every task of the job agrees on the port
    _local_job_env(monkeypatch, ntasks=1, rank=0)
    assert export_torch_distributed_env() is None and "RANK" not in os.environ  # single task: nothing to set
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert export_torch_distributed_env() is None  # not inside a job


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")  # SlurmExecutor looks for srun
    args = argparse.ArgumentParser()
    cluster.add_cluster_arguments(args)
    opts = cluster.options_from_args(args.parse_args(
        ["--executor", "slurm", "--partition", "gpu", "--gpus-per-node", "4", "--nodes", "2", "--cpus-per-task", "8",
         "--mem-gb", "64", "--timeout-min", "600", "--array-parallelism", "3", "--slurm-extra", "account=abc",
         "--slurm-extra", "constraint=a100"]))
    ex = make_executor(opts, tmp_path / "logs")
    p = ex._executor.parameters
    assert p["partition"] == "gpu" and p["gpus_per_node"] == 4 and p["ntasks_per_node"] == 4 and p["nodes"] == 2
    assert p["cpus_per_task"] == 8 and p["time"] == 600 and p["array_parallelism"] == 3 and p["mem"] == "64GB"
    assert p["additional_parameters"] == {"account": "abc", "constraint": "a100"}
    sbatch = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--ntasks-per-node=4", "--gpus-per-node=4", "--account=abc", "--nodes=2"):
        assert f"#SBATCH {line}" in sbatch
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cluster.options_from_args(args.parse_args(["--executor", "slurm", "--slurm-extra", "oops"]))
    with pytest.raises(ValueError, match="need --executor slurm"):
        cluster.options_from_args(args.parse_args(["--executor", "local", "--partition", "gpu"]))
    local = cluster.options_from_args(args.parse_args(["--executor", "local", "--gpus-per-node", "2"]))
    assert make_executor(local, tmp_path / "l")._executor.parameters["tasks_per_node"] == 2  # one task per GPU


def test_missing_submitit_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ImportError, match=r"pip install 'lpft\[cluster\]'"):
        make_executor(ClusterOptions(executor="local"), tmp_path)
    with pytest.raises(ImportError, match=r"lpft\[cluster\]"):
        RunJob(["--method", "lp"]).checkpoint()


def test_status_table_states(tmp_path, capsys):
    out = tmp_path / "runs"
    lp, ft = _plan(out)
    assert main([*SWEEP, "--out", str(out), "--status", *RUN_FLAGS]) == {"not started": [lp.run_id, ft.run_id]}
    with RunLock(lp.run_dir):
        states = {s.run_id: s for s in cluster.run_states([lp, ft], out / ".submitit")}
        assert states[lp.run_id].state == "running" and f"pid {os.getpid()}" in states[lp.run_id].detail
    (ft.run_dir).mkdir(parents=True)
    (ft.run_dir / "config.json").write_text(json.dumps(dict(ft.config, limit=99)))
    capsys.readouterr()
    states = main([*SWEEP, "--out", str(out), "--status", *RUN_FLAGS])  # exits normally, even on a mismatch
    assert states == {"not started": [lp.run_id], "config differs": [ft.run_id]}
    text = capsys.readouterr().out
    assert len([ln for ln in text.splitlines() if ln.startswith("digits-")]) == 2 and "fields: limit" in text


def test_status_of_slurm_jobs_from_their_logs(tmp_path, capsys):
    """Without sacct (as here) a Slurm job's end is read from submitit's result file and its stderr log."""
    out, logs = tmp_path / "runs", tmp_path / "logs"
    lp, ft = _plan(out)
    logs.mkdir()
    (logs / "jobs.json").write_text(json.dumps({
        lp.run_id: {"job_id": "900_0", "executor": "slurm", "host": "login1", "submitted": "x", "argv": []},
        ft.run_id: {"job_id": "900_1", "executor": "slurm", "host": "login1", "submitted": "x", "argv": []}}))
    (logs / "900_1_0_result.pkl").write_bytes(b"x")  # submitit wrote a result: the job has ended
    (logs / "900_1_0_log.err").write_text("\n".join([f"line {i}" for i in range(20)] + [
        "Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
        "lpft.vision.engine.TrainingDiverged: training loss became nan at epoch 1", ""]))
    states = {st.run_id: st for st in cluster.run_states([lp, ft], logs)}
    assert states[lp.run_id].state == "not started" and "900_0 state unknown" in states[lp.run_id].detail
    assert states[ft.run_id].state == "failed" and states[ft.run_id].job_id == "900_1"
    assert states[ft.run_id].detail == "lpft.vision.engine.TrainingDiverged: training loss became nan at epoch 1"
    assert len(states[ft.run_id].log_tail) == 10 and states[ft.run_id].log_tail[-1].endswith("epoch 1")
    assert main([*SWEEP, "--out", str(out), "--logs", str(logs), "--status", *RUN_FLAGS]) == {
        "not started": [lp.run_id], "failed": [ft.run_id]}
    assert "--- " + ft.run_id + ": last lines of job 900_1" in capsys.readouterr().out
