"""lpft.vision.sweep: the run plan (plain data) and the resuming executor, with a fake runner."""

from __future__ import annotations

import json

import pytest

from lpft.vision.sweep import (
    FT_GRID,
    LPFT_GRID,
    LPFT_GRID_IMAGENET,
    main,
    paper_lr_grid,
    plan_sweep,
    run_id_for,
    run_sweep,
)


def _flag(argv, name):
    argv = list(argv)
    return argv[argv.index(name) + 1] if name in argv else None


def test_paper_plan_contents(tmp_path):
    plan = plan_sweep("digits", "tiny_cnn", ["lp", "ft", "lpft", "wiseft"], [0, 1, 2], str(tmp_path),
                      extra_args=["--epochs", "2", "--limit", "64"])
    by = {}
    for r in plan:
        by.setdefault(r.method, []).append(r)
    assert len(by["lp"]) == 3 and all(r.lr is None for r in by["lp"])
    assert sorted({r.lr for r in by["ft"]}) == sorted(FT_GRID) and len(by["ft"]) == 3 * len(FT_GRID)
    assert sorted({r.lr for r in by["lpft"]}) == sorted(LPFT_GRID) and len(by["lpft"]) == 18
    assert sorted({r.lr for r in by["wiseft"]}) == sorted(FT_GRID)  # non-CLIP: FT's grid
    assert len(plan) == 3 + 18 + 18 + 18
    assert len({r.run_id for r in plan}) == len(plan)
    for r in plan:
        assert _flag(r.argv, "--method") == r.method and int(_flag(r.argv, "--seed")) == r.seed
        assert _flag(r.argv, "--run-id") == r.run_id == run_id_for("digits", "tiny_cnn", r.method, r.lr, r.seed)
        assert _flag(r.argv, "--out") == str(tmp_path)
        assert list(r.argv[-4:]) == ["--epochs", "2", "--limit", "64"]
        if r.lr is None:
            assert "--lr" not in r.argv and "-lrna-" in r.run_id
        else:
            assert float(_flag(r.argv, "--lr")) == r.lr
        json.dumps(r.to_dict())  # plain data: serialisable for a scheduler
    assert plan[0].run_id == "digits-tiny_cnn-lp-lrna-seed0"
    assert "digits-tiny_cnn-lpft-lr3e-05-seed2" in {r.run_id for r in plan}


def test_plan_argv_is_accepted_by_the_runner_parser(tmp_path):
    run = pytest.importorskip("lpft.vision.run")
    plan = plan_sweep("digits", "tiny_cnn", ["lp", "wiseft"], [0], str(tmp_path), lrs=[1e-3],
                      extra_args=["--epochs", "1"])
    for r in plan:
        args = run.build_parser().parse_args(list(r.argv))
        assert args.method == r.method and args.seed == r.seed and args.run_id == r.run_id and args.lr == r.lr


def test_grids_per_benchmark_and_backbone():
    assert paper_lr_grid("lpft", "imagenet", "clip_vit_b16") == LPFT_GRID_IMAGENET
    assert paper_lr_grid("wiseft", "imagenet", "clip_vit_b16") == (3e-5,)
    assert paper_lr_grid("wiseft", "digits", "clip_vit_b32") == (3e-5,)
    assert paper_lr_grid("lp", "living17", "moco_v2_resnet50") == (None,)
    assert paper_lr_grid("zeroshot", "imagenet", "clip_vit_b16") == (None,)


def test_explicit_lrs_and_bad_input(tmp_path):
    plan = plan_sweep("digits", "tiny_cnn", ["ft", "zeroshot"], [0, 1], str(tmp_path), lrs=[1e-3, 1e-4])
    assert [(r.method, r.lr, r.seed) for r in plan] == [
        ("ft", 1e-3, 0), ("ft", 1e-3, 1), ("ft", 1e-4, 0), ("ft", 1e-4, 1), ("zeroshot", None, 0), ("zeroshot", None, 1)]
    with pytest.raises(ValueError, match="unknown method"):
        plan_sweep("digits", "tiny_cnn", ["sgd"], [0], str(tmp_path))
    with pytest.raises(ValueError, match="set by the sweep"):
        plan_sweep("digits", "tiny_cnn", ["ft"], [0], str(tmp_path), extra_args=["--lr", "1e-3"])
    with pytest.raises(ValueError, match="positive"):
        plan_sweep("digits", "tiny_cnn", ["ft"], [0], str(tmp_path), lrs=[-1.0])
    with pytest.raises(ValueError, match="seeds"):
        plan_sweep("digits", "tiny_cnn", ["ft"], [], str(tmp_path))


class FakeRunner:
    """Stands in for lpft.vision.run.main: records each argv and writes records.jsonl like a finished run."""

    def __init__(self, fail_on=(), write=True):
        self.calls, self.fail_on, self.write = [], set(fail_on), write

    def __call__(self, argv):
        self.calls.append(list(argv))
        rid = _flag(argv, "--run-id")
        if rid in self.fail_on:
            raise RuntimeError("boom")
        if self.write:
            d = __import__("pathlib").Path(_flag(argv, "--out")) / rid
            d.mkdir(parents=True, exist_ok=True)
            (d / "records.jsonl").write_text("{}\n")


def test_run_sweep_skips_complete_runs_and_resumes(tmp_path):
    plan = plan_sweep("digits", "tiny_cnn", ["lp", "ft"], [0, 1], str(tmp_path), lrs=[1e-3, 1e-2])
    # a finished run and an unfinished one (config but no records) from an interrupted sweep
    done = plan[1]
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "records.jsonl").write_text("{}\n")
    (plan[2].run_dir).mkdir(parents=True)
    (plan[2].run_dir / "config.json").write_text("{}")
    fake = FakeRunner()
    status = run_sweep(plan, runner=fake, progress=False)
    assert status["skipped"] == [done.run_id]
    assert status["done"] == [r.run_id for r in plan if r is not done]
    assert [c for c in fake.calls] == [list(r.argv) for r in plan if r is not done]
    again = FakeRunner()
    status = run_sweep(plan, runner=again, progress=False)
    assert again.calls == [] and len(status["skipped"]) == len(plan)


def test_run_sweep_failures(tmp_path):
    plan = plan_sweep("digits", "tiny_cnn", ["ft"], [0, 1, 2], str(tmp_path), lrs=[1e-3])
    bad = plan[1].run_id
    with pytest.raises(RuntimeError, match=bad):
        run_sweep(plan, runner=FakeRunner(fail_on={bad}), progress=False)
    assert plan[0].is_complete() and not plan[2].is_complete()  # stopped at the failure
    status = run_sweep(plan, runner=FakeRunner(fail_on={bad}), keep_going=True, progress=False)
    assert status == {"done": [plan[2].run_id], "skipped": [plan[0].run_id], "failed": [bad]}
    with pytest.raises(RuntimeError, match="wrote no"):
        run_sweep(plan, runner=FakeRunner(write=False), progress=False)


def test_cli_dry_run(tmp_path, capsys):
    main(["--benchmark", "digits", "--backbone", "tiny_cnn", "--methods", "lp,lpft", "--seeds", "0,1",
          "--lrs", "1e-4", "--out", str(tmp_path), "--dry-run", "--epochs", "1"])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("python -m lpft.vision.run")]
    assert len(lines) == 4
    assert all(ln.endswith("--epochs 1") for ln in lines)
    assert "--run-id digits-tiny_cnn-lpft-lr0.0001-seed1" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    with pytest.raises(SystemExit):
        main(["--backbone", "tiny_cnn", "--out", str(tmp_path), "--dry-run", "--seed", "3"])


def test_run_id_matches_the_runner_default():
    config = pytest.importorskip("lpft.vision.config")
    for method, lr in (("ft", 3e-5), ("lpft", 1e-4), ("lp", None)):
        cfg = config.RunConfig(method=method, benchmark="digits", backbone="tiny_cnn", seed=2, lr=lr)
        assert config.default_run_id(cfg) == run_id_for("digits", "tiny_cnn", method, lr, 2)


def test_preset_lrs_come_from_the_runner_presets(tmp_path):
    config = pytest.importorskip("lpft.vision.config")
    plan = plan_sweep("digits", "tiny_cnn", ["lp", "ft", "lpft"], [0], str(tmp_path), lrs="preset")
    for r in plan:
        want = config.resolve_config(config.RunConfig(method=r.method, benchmark="digits", backbone="tiny_cnn")).lr
        assert r.lr == want
    assert [r.lr is None for r in plan] == [True, False, False]
