"""Every benchmark runs through ``python -m lpft.vision.run --benchmark NAME --data-root DIR`` on its
miniature fixture (real on-disk layout), with a tiny backbone."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.data import fixtures, get_benchmark  # noqa: E402
from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

BUILDERS = {
    "living17": lambda root: fixtures.build_breeds(root, "living17"),
    "entity30": lambda root: fixtures.build_breeds(root, "entity30"),
    "domainnet": fixtures.build_domainnet,
    "cifar10": fixtures.build_cifar,
    "imagenet": fixtures.build_imagenet,
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_lp_run_on_fixture(tmp_path, name):
    root = BUILDERS[name](tmp_path / "data")
    run_dir = main(["--method", "lp", "--backbone", "tiny_cnn", "--benchmark", name, "--data-root", str(root),
                    "--image-size", "16", "--lp-num-cs", "3", "--limit", "40", "--out", str(tmp_path / "runs"),
                    "--quiet"])
    recs = read_records(run_dir / "records.jsonl")
    bench = get_benchmark(name)
    got = {r["eval_split"]: r["shift"] for r in recs}
    assert got == {s: bench.splits[s] for s in bench.eval_splits}
    assert all(0.0 <= r["value"] <= 1.0 for r in recs if r["metric"] in ("acc", "ece"))
    assert {r["metric"] for r in recs} == {"acc", "ece", "nll"} and all(r["value"] >= 0 for r in recs)


def test_ft_run_on_imagenet_fixture_with_projected_splits(tmp_path):
    """FT through the engine on ImageNet's fixture: R / A (masked) and ObjectNet (pooled) evaluate."""
    root = fixtures.build_imagenet(tmp_path / "data")
    run_dir = main(["--method", "ft", "--backbone", "tiny_cnn", "--benchmark", "imagenet", "--data-root", str(root),
                    "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--limit", "32",
                    "--out", str(tmp_path / "runs"), "--quiet", "--no-distortion"])
    recs = [r for r in read_records(run_dir / "records.jsonl") if r["epoch"] is None]
    assert {r["eval_split"] for r in recs} >= {"imagenet_r", "imagenet_a", "objectnet", "imagenet_v2"}


def test_fmow_without_wilds_says_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wilds", None)
    root = fixtures.build_fmow(tmp_path / "data")
    with pytest.raises(ImportError, match="pip install"):
        main(["--method", "lp", "--backbone", "tiny_cnn", "--benchmark", "fmow", "--data-root", str(root),
              "--out", str(tmp_path / "runs"), "--quiet"])


def test_fmow_run_through_wilds_interface(tmp_path, monkeypatch):
    """With a WILDS-compatible dataset object (the package itself is optional), fmow runs end to end."""
    from lpft.vision.data import fmow

    rows = [(split, region, i % 3) for i in range(4)
            for split, region in [("train", "Americas"), ("id_val", "Americas"), ("id_val", "Africa"),
                                  ("id_val", "Europe"), ("val", "Americas"), ("val", "Africa"), ("val", "Europe")]]
    fake = fixtures.FakeWildsFMoW(rows)
    monkeypatch.setattr(fmow.FMoWBenchmark, "_open", lambda self, root: fake)
    run_dir = main(["--method", "lp", "--backbone", "tiny_cnn", "--benchmark", "fmow", "--data-root", str(tmp_path),
                    "--image-size", "16", "--lp-num-cs", "3", "--out", str(tmp_path / "runs"), "--quiet"])
    recs = read_records(run_dir / "records.jsonl")
    assert {r["eval_split"]: r["shift"] for r in recs} == {"id_val": "id", "id_test": "id", "africa": "ood",
                                                         "europe": "ood"}
