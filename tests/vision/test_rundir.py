"""lpft.vision.rundir: run-directory locks (O_EXCL, stale takeover) and checkpoints with a fallback copy."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys

import pytest
import torch

from lpft.vision.rundir import (
    LOCK_NAME,
    CheckpointFallbackWarning,
    CorruptCheckpointError,
    RunLock,
    RunLockedError,
    load_checkpoint,
    lock_is_stale,
    prev_checkpoint_path,
    read_lock,
    save_checkpoint,
)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the pid no longer names a process
    return p.pid


def _write_lock(run_dir, **info):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"started": "2020-01-01T00:00:00+00:00", **info}))


# --- locks ------------------------------------------------------------------------------------------------
def test_second_lock_is_refused_naming_host_and_pid(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir) as lock:
        held = json.loads((run_dir / LOCK_NAME).read_text())
        assert held["host"] == socket.gethostname() and held["pid"] == lock.info["pid"]
        assert {"host", "pid", "started"} <= set(held)
        with pytest.raises(RunLockedError) as e:
            RunLock(run_dir).acquire()
        msg = str(e.value)
        assert socket.gethostname() in msg and f"pid {held['pid']}" in msg and str(run_dir) in msg
        assert read_lock(run_dir)["token"] == held["token"]  # the refused attempt left the lock alone
    assert not (run_dir / LOCK_NAME).exists()  # released on exit
    with RunLock(run_dir):  # free again
        pass


def test_lock_is_released_on_exceptions(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunLock(tmp_path):
            1 / 0
    assert read_lock(tmp_path) is None


def test_live_process_on_this_host_is_refused(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, host=socket.gethostname(), pid=proc.pid)
        assert lock_is_stale(read_lock(tmp_path)) is None
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} on host"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_with_dead_pid_is_taken_over(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, host=socket.gethostname(), pid=pid)
    assert "no longer running" in lock_is_stale(read_lock(tmp_path))
    with pytest.warns(UserWarning, match=f"stale lock.*pid {pid}"):
        lock = RunLock(tmp_path).acquire()
    try:
        held = read_lock(tmp_path)
        assert held["pid"] != pid and held["token"] == lock.info["token"]
    finally:
        lock.release()
    assert read_lock(tmp_path) is None and not (tmp_path / ".lock.takeover").exists()


def test_reused_pid_is_stale(tmp_path):
    # this process's pid, recorded with another start time: the holder died and the pid was reused
    import os

    _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), pid_start="1")
    assert lock_is_stale(read_lock(tmp_path)) is not None


def test_lock_from_another_host_is_refused_with_removal_hint(tmp_path):
    _write_lock(tmp_path, host="node-that-is-not-here", pid=_dead_pid())
    with pytest.raises(RunLockedError) as e:
        RunLock(tmp_path).acquire()
    msg = str(e.value)
    assert "node-that-is-not-here" in msg and f"remove {tmp_path / LOCK_NAME}" in msg
    assert read_lock(tmp_path)["host"] == "node-that-is-not-here"  # untouched


def test_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    _write_lock(tmp_path, host="node-a", pid=12345, job={"id": "777", "restart": "0"})
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same incarnation: may be alive elsewhere
    with pytest.raises(RunLockedError, match="Slurm job 777"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: the previous incarnation has ended
    with pytest.warns(UserWarning, match="earlier incarnation of Slurm job 777"):
        with RunLock(tmp_path) as lock:
            assert read_lock(tmp_path)["job"] == {"id": "777", "restart": "1"} == lock.info["job"]


def test_unreadable_lock_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(RunLockedError, match="cannot be read.*remove"):
        RunLock(tmp_path).acquire()


def test_release_keeps_a_lock_taken_over_by_another_process(tmp_path):
    lock = RunLock(tmp_path).acquire()
    _write_lock(tmp_path, host="elsewhere", pid=1, token="theirs")
    with pytest.warns(UserWarning, match="taken over"):
        lock.release()
    assert read_lock(tmp_path)["token"] == "theirs"


# --- checkpoints ------------------------------------------------------------------------------------------
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_save_rotates_and_truncated_checkpoint_falls_back(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.full((50, 50), 1.0)}, path)
    assert not prev_checkpoint_path(path).exists()
    save_checkpoint({"epoch": 2, "w": torch.full((50, 50), 2.0)}, path)
    save_checkpoint({"epoch": 3, "w": torch.full((50, 50), 3.0)}, path)
    assert prev_checkpoint_path(path) == tmp_path / "ckpt" / "last.prev.pt"
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(prev_checkpoint_path(path))["epoch"] == 2  # a separate file, not the newest
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.prev.pt", "last.pt"]  # no temporaries

    _truncate(path)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint(path, fallback=False)
    with pytest.warns(CheckpointFallbackWarning, match=str(prev_checkpoint_path(path))):
        ck = load_checkpoint(path)
    assert ck["epoch"] == 2 and torch.equal(ck["w"], torch.full((50, 50), 2.0))

    # saving over the damaged file does not rotate it into .prev.pt: the last good one stays there
    with pytest.warns(UserWarning, match="damaged"):
        save_checkpoint({"epoch": 4, "w": torch.zeros(1)}, path)
    assert load_checkpoint(path)["epoch"] == 4 and load_checkpoint(prev_checkpoint_path(path))["epoch"] == 2


def test_damaged_without_usable_previous(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(100)}, path)
    _truncate(path)
    with pytest.raises(CorruptCheckpointError, match="last.pt is truncated or corrupt"):
        load_checkpoint(path)  # no .prev.pt
    save_checkpoint({"epoch": 2, "w": torch.ones(100)}, tmp_path / "b.pt")
    save_checkpoint({"epoch": 3, "w": torch.ones(100)}, tmp_path / "b.pt")
    _truncate(tmp_path / "b.pt")
    _truncate(tmp_path / "b.prev.pt")
    with pytest.raises(CorruptCheckpointError, match="b.prev.pt is damaged too"):
        load_checkpoint(tmp_path / "b.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty.pt"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_training_checkpoint_loads_under_weights_only(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ckpt = {"model": model.state_dict(), "epoch": 2, "best_val_acc": 0.75, "name": "ft", "none": None,
            "history": [{"epoch": 0, "val_acc": 0.5, "train_loss": None, "lr": None},
                        {"epoch": 1, "val_acc": 0.75, "train_loss": 1.25, "lr": 1e-3}],
            "shape": (3, 4), "flags": [True, False]}
    for opt_cls in (torch.optim.SGD, torch.optim.AdamW):
        opt = opt_cls(model.parameters(), lr=1e-3, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        ckpt["optimizer"] = opt.state_dict()
        save_checkpoint(ckpt, tmp_path / "last.pt")
        back = load_checkpoint(tmp_path / "last.pt")
        assert back["history"] == ckpt["history"] and back["shape"] == (3, 4) and back["none"] is None
        assert all(torch.equal(back["model"][k], v) for k, v in ckpt["model"].items())
        assert back["optimizer"]["param_groups"] == ckpt["optimizer"]["param_groups"]
        for k, st in ckpt["optimizer"]["state"].items():
            assert all(torch.equal(back["optimizer"]["state"][k][n], t) for n, t in st.items())


class _NotAllowed:
    pass


def test_arbitrary_objects_are_refused_without_fallback(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"ok": 1}, path)
    save_checkpoint({"obj": _NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match="last.pt holds objects other than"):
        load_checkpoint(path)  # intact file: not "corrupt", so .prev.pt is not used silently
