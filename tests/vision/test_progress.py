"""Progress on a terminal, a few lines in a log file, nothing with --quiet."""

from __future__ import annotations

import os
import subprocess
import sys

RUN = [sys.executable, "-m", "lpft.vision.run", "--backbone", "tiny_cnn", "--limit", "96", "--epochs", "2",
       "--method", "wiseft", "--alphas", "0,0.5,1", "--lp-num-cs", "4"]


def _run(tmp_path, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([*RUN, "--out", str(tmp_path), *extra], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_log_file_is_not_flooded_and_quiet_is_silent(tmp_path):
    # stderr is a pipe here, as in a cluster job's log: every bar shows, but redraws are rate-limited
    loud = _run(tmp_path / "a")
    lines = loud.stderr.replace("\r", "\n").splitlines()
    for desc in ("epoch 1/2", "WiSE-FT alphas", "BN stats", "feature distortion"):
        assert any(desc in ln for ln in lines), f"no progress shown for {desc!r}"
    assert len(lines) < 200, f"{len(lines)} progress lines for a tiny run: the log is flooded"
    quiet = _run(tmp_path / "b", "--quiet")
    assert "it/s" not in quiet.stderr and "s/it" not in quiet.stderr and "%|" not in quiet.stderr
    assert "records.jsonl" in quiet.stdout  # results are still printed
