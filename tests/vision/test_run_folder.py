"""``python -m lpft.vision.run --benchmark folder --data-root DIR``: every method on a dataset the test writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import zeroshot  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

# Each class is a colour and a pattern, so the task is learnable from 12 images (sorted folder names = labels).
CLASSES = {"blue_stripes": (40, 60, 220), "green_dots": (40, 200, 60), "red_square": (220, 40, 40),
           "yellow_ring": (230, 220, 40)}
SPLITS = {"id_train": (list(CLASSES), 12), "id_test": (list(CLASSES), 4),
          "night": (list(CLASSES), 3), "sketch": (["green_dots", "yellow_ring"], 3)}  # no id_val: held out
SHIFTS = {"id_val": "id", "id_test": "id", "night": "ood", "sketch": "ood"}


def _image(name: str, i: int, dark: bool, grey: bool) -> Image.Image:
    rng = np.random.default_rng(i)
    colour = np.array(CLASSES[name], np.float32) * (0.5 if dark else 1.0)
    if grey:
        colour[:] = colour.mean()
    img = np.full((32, 32, 3), 20, np.float32) + rng.normal(0, 8, (32, 32, 3))
    yy, xx = np.mgrid[:32, :32]
    mask = {"blue_stripes": yy % 6 < 3, "green_dots": (yy % 8 < 3) & (xx % 8 < 3),
            "red_square": (abs(yy - 16) < 9) & (abs(xx - 16) < 9),
            "yellow_ring": abs(np.hypot(yy - 16, xx - 16) - 10) < 3}[name]
    img[mask] = colour
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def build_folder(root: Path) -> Path:
    for split, (classes, n) in SPLITS.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                seed = 1000 * list(SPLITS).index(split) + 100 * list(CLASSES).index(c) + i
                img = _image(c, seed, dark=split == "night", grey=split == "sketch")
                img.save(root / split / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("folder") / "data")


FAST = ["--benchmark", "folder", "--backbone", "tiny_clip", "--epochs", "1", "--limit", "48", "--quiet",
        "--no-distortion", "--lp-num-cs", "4", "--batch-size", "16"]


def _run(data_root, out: Path, method: str, *extra) -> Path:
    return main([*FAST, "--data-root", str(data_root), "--out", str(out), "--method", method, *extra])


def _final(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir / "records.jsonl") if r["metric"] == "acc" and r.get("epoch") is None]


@pytest.fixture
def prompts_seen(monkeypatch):
    """Spy on the class names the zero-shot head is built from."""
    seen = []
    real = zeroshot.zeroshot_head

    def spy(backbone, classnames, templates, *args, **kwargs):
        seen.append((list(classnames), list(templates)))
        return real(backbone, classnames, templates, *args, **kwargs)

    monkeypatch.setattr(zeroshot, "zeroshot_head", spy)
    return seen


NAMES = ["blue stripes", "green dots", "red square", "yellow ring"]


@pytest.mark.parametrize("method", ["lp", "ft", "lpft", "wiseft", "zeroshot"])
def test_method_reports_every_folder_split(tmp_path, data_root, prompts_seen, method):
    run_dir = _run(data_root, tmp_path / "runs", method, *(["--alphas", "0,0.5,1"] if method == "wiseft" else []))
    final = _final(run_dir)
    models = {(r.get("stage"), r["alpha"], r.get("bn_stats")) for r in final}
    for model in models:  # every reported model (each alpha, LP-FT's LP stage) has one column per split
        got = {r["eval_split"]: r["shift"] for r in final if (r.get("stage"), r["alpha"], r.get("bn_stats")) == model}
        assert got == SHIFTS, model
    assert all(r["benchmark"] == "folder" and 0.0 <= r["value"] <= 1.0 for r in final)
    cfg = json.loads((run_dir / "config.json").read_text())
    info = cfg["split_info"]
    assert info["id_train"]["class_folders"] == sorted(CLASSES) and info["id_train"]["holdout_fraction"] == 0.1
    assert info["id_val"]["val_source"] == "held out from id_train" and info["id_val"]["selection"] == "heldout"
    assert info["sketch"]["missing_classes"] == ["blue_stripes", "red_square"]
    assert info["night"]["missing_classes"] == []
    if method in ("zeroshot", "wiseft"):  # the zero-shot head (WiSE-FT's theta_0) reads '_' as a space
        (names, templates), = prompts_seen
        assert names == NAMES and "a photo of a {}." in templates
    else:
        assert prompts_seen == []
    if method == "wiseft":
        assert {r["alpha"] for r in final} == {0.0, 0.5, 1.0}
    if method == "lp":  # learnable: a linear probe on random tiny_clip features separates colour + pattern
        acc = {r["eval_split"]: r["value"] for r in final}
        assert acc["id_test"] >= 0.75, acc
    if method in ("ft", "lpft"):
        assert cfg["selection"] == "paper"  # the LP-FT protocol asks for it; the folder has no id_val
        assert info["id_val"]["selection_requested"] == "paper"
    if method == "lpft":
        assert {r.get("stage") for r in final} == {None, "lp"}


def test_missing_or_bad_root_fails_before_any_work(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="a --data-root"):
        main([*FAST, "--out", str(tmp_path / "runs"), "--method", "lp"])
    with pytest.raises(FileNotFoundError, match="id_train"):
        _run(tmp_path, tmp_path / "runs", "lp")  # a root without id_train
    assert not (tmp_path / "runs").exists()


def test_unreadable_image_follows_on_corrupt(tmp_path, data_root):
    import shutil

    root = Path(shutil.copytree(data_root, tmp_path / "data"))
    bad = root / "night" / "red_square" / "broken.png"
    bad.write_bytes(b"\x89PNG not an image")
    with pytest.raises(OSError, match="broken.png"):
        _run(root, tmp_path / "stop", "lp")
    with pytest.warns(RuntimeWarning, match="skipped 1 corrupt image"):
        run_dir = _run(root, tmp_path / "skip", "lp", "--on-corrupt", "skip")
    assert {r["eval_split"] for r in _final(run_dir)} == set(SHIFTS)


def test_another_dataset_never_reuses_a_run_directory(tmp_path, data_root):
    """data_root is bookkeeping for the papers' benchmarks, but it names the dataset of a folder run."""
    import shutil

    from lpft.vision.rundir import RunConfigMismatch

    other = tmp_path / "other_data"
    shutil.copytree(data_root, other)
    first = _run(data_root, tmp_path / "runs", "lp")
    second = _run(other, tmp_path / "runs", "lp")
    assert first != second and first.name.startswith(f"folder_{data_root.name}-")  # named by the dataset
    with pytest.raises(RunConfigMismatch, match="dataset_root"):
        _run(other, tmp_path / "runs", "lp", "--run-id", first.name)
