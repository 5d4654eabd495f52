"""``python -m lpft.figures``: theory and paper figures always, run figures from a runs folder, skips reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
ALWAYS = ("theory-fig2_toy", "theory-ood_vs_eps", "paper-lpft_accuracy", "paper-wiseft_id_vs_ood")
RUN_FIGS = ("runs-digits-tiny_cnn-id_vs_ood", "runs-digits-tiny_cnn-feature_distortion")


def _check_png(path: Path) -> None:
    """A real, non-blank image of a sensible size, under the README's 300 KB."""
    from PIL import Image

    assert path.is_file(), path
    assert 5_000 < path.stat().st_size < 300_000, (path, path.stat().st_size)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert 400 <= im.width <= 4000 and 300 <= im.height <= 3000, (path, im.size)
        px = np.asarray(im.convert("L"), dtype=float)
    assert px.std() > 10 and (px < 128).mean() > 0.005, f"{path} looks blank"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lpft.figures", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_import_is_light():
    """``import lpft.figures`` loads neither torch nor matplotlib (they come with the figures that need them)."""
    code = ("import sys, lpft, lpft.figures; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_without_runs_writes_theory_and_paper_figures_and_reports_skips(tmp_path):
    proc = _cli("--small", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for name in ALWAYS:
        _check_png(tmp_path / f"{name}.png")
        assert f"wrote {tmp_path / name}.png" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in ALWAYS)  # PNG only
    for kind in ("id_vs_ood", "feature_distortion"):
        assert f"skipped runs-*-{kind}: no --runs given" in proc.stdout
    assert "nothing overlaid" in proc.stdout


def test_cli_rejects_a_missing_runs_folder(tmp_path):
    from lpft.figures import main

    with pytest.raises(SystemExit) as e:
        main(["--small", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing drawn


@pytest.mark.slow
def test_cli_with_tiny_runs_adds_run_figures(tmp_path, capsys):
    """Real FT and LP-FT runs (tiny_cnn, 64 images, 1 epoch): ID vs OOD and feature distortion are drawn; the paper
    figures say the digits runs match no published cell."""
    from lpft.figures import main
    from lpft.vision.run import main as run_main

    runs = tmp_path / "runs"
    for method in ("ft", "lpft"):
        run_main(["--method", method, "--backbone", "tiny_cnn", "--limit", "64", "--epochs", "1", "--quiet",
                  "--out", str(runs)])
    capsys.readouterr()
    out = tmp_path / "figs"
    report = main(["--small", "--out", str(out), "--runs", str(runs), "--pdf"])
    text = capsys.readouterr().out
    for name in ALWAYS + RUN_FIGS:
        _check_png(out / f"{name}.png")
        assert (out / f"{name}.pdf").stat().st_size > 0
        assert f"wrote {out / name}.png" in text
    assert report.skipped == {} and "skipped" not in text
    assert "not overlaid: digits/tiny_cnn" in text
