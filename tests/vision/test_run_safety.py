"""A run directory is never reused for another config, is locked while in use, and survives a damaged
checkpoint (review of commit a907381, finding 3; issue "safe when things go wrong")."""

from __future__ import annotations

import json
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.rundir import RunConfigMismatch, RunLockedError  # noqa: E402
from lpft.vision.run import main  # noqa: E402

TINY = ["--backbone", "tiny_cnn", "--limit", "64", "--epochs", "2", "--quiet", "--lp-num-cs", "4", "--no-distortion"]


@pytest.mark.parametrize("change, field", [(["--limit", "48"], "limit"), (["--epochs", "3"], "epochs"),
                                           (["--protocol", "wiseft"], "protocol")])
def test_rerun_with_another_config_is_refused_naming_the_fields(tmp_path, change, field):
    argv = [*TINY, "--method", "ft", "--out", str(tmp_path), "--run-id", "r"]
    main(argv)
    changed = [*argv, *change]
    with pytest.raises(RunConfigMismatch, match=field) as e:
        main(changed)
    assert "stored" in str(e.value) and "requested" in str(e.value)
    with pytest.raises(RunConfigMismatch, match=field):  # --resume only continues the same config
        main([*changed, "--resume"])
    # the same config is complete: nothing to do, and bookkeeping flags do not count as a change
    assert main([*argv, "--num-workers", "0", "--cache-dir", str(tmp_path / "c")]) == tmp_path / "r"


def test_a_run_directory_in_use_is_refused_with_its_holder(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": "2026-01-01T00:00:00+00:00"}
    (run_dir / ".lock").write_text(json.dumps(holder))
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}"):
        main([*TINY, "--method", "lp", "--out", str(tmp_path), "--run-id", "r"])


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (run_dir / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": "x"}))
    with pytest.warns(UserWarning, match="stale lock"):
        main([*TINY, "--method", "lp", "--out", str(tmp_path), "--run-id", "r"])
    assert (run_dir / "records.jsonl").exists() and not (run_dir / ".lock").exists()


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    ref = main([*TINY, "--method", "ft", "--epochs", "3", "--out", str(tmp_path / "ref")])
    # an interrupted run: epochs 1-2 done, then last.pt (epoch 2) is damaged and records.jsonl absent
    run = main([*TINY, "--method", "ft", "--epochs", "3", "--out", str(tmp_path / "x")])
    (run / "records.jsonl").unlink()
    from lpft.vision.rundir import load_checkpoint, save_checkpoint

    ck = load_checkpoint(run / "ckpt" / "last.pt")
    assert ck["epoch"] == 3
    prev = load_checkpoint(run / "ckpt" / "last.prev.pt")
    assert prev["epoch"] == 2
    save_checkpoint(prev, run / "ckpt" / "last.pt")  # last = epoch 2, prev = epoch 3 ...
    save_checkpoint(prev, run / "ckpt" / "last.pt")  # ... now last = prev = epoch 2
    data = (run / "ckpt" / "last.pt").read_bytes()
    (run / "ckpt" / "last.pt").write_bytes(data[: len(data) // 2])  # truncated by a crash
    with pytest.warns(UserWarning, match="last.prev.pt"):
        main([*TINY, "--method", "ft", "--epochs", "3", "--out", str(tmp_path / "x"), "--resume"])
    got, want = read_records(run / "records.jsonl"), read_records(ref / "records.jsonl")
    key = lambda rs: {(r["eval_split"], r["metric"], r["epoch"]): r["value"] for r in rs}  # noqa: E731
    assert key(got) == pytest.approx(key(want), abs=1e-6)


def test_a_truncated_checkpoint_without_fallback_is_a_clear_error(tmp_path):
    from lpft.vision.rundir import CorruptCheckpointError, load_checkpoint

    run = main([*TINY, "--method", "ft", "--epochs", "1", "--out", str(tmp_path)])
    path = run / "ckpt" / "last.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match="last.pt"):
        load_checkpoint(path, fallback=False)
