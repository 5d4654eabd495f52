"""lpft.vision.sweep: the run plan (plain data), the config check, and the resuming executor (fake runner and
real digits runs)."""

from __future__ import annotations

import json
import os

import pytest

from lpft.vision.rundir import RunConfigMismatch
from lpft.vision.sweep import (
    FT_GRID,
    LPFT_GRID,
    LPFT_GRID_IMAGENET,
    SweepRun,
    check_plan,
    main,
    paper_lr_grid,
    plan_sweep,
    resolve_run_config,
    run_id_for,
    run_sweep,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
    plan = plan_sweep("digits", "tiny_clip", ["ft", "zeroshot"], [0, 1], str(tmp_path), lrs=[1e-3, 1e-4])
    assert [(r.method, r.lr, r.seed) for r in plan] == [
        ("ft", 1e-3, 0), ("ft", 1e-3, 1), ("ft", 1e-4, 0), ("ft", 1e-4, 1), ("zeroshot", None, 0), ("zeroshot", None, 1)]
    with pytest.raises(ValueError, match="needs a CLIP backbone"):  # refused when planned, not when run
        plan_sweep("digits", "tiny_cnn", ["zeroshot"], [0], str(tmp_path))
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
    (plan[2].run_dir / "config.json").write_text(json.dumps(dict(plan[2].config)))
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


def test_run_ids_and_configs_come_from_the_resolved_runner_config(tmp_path):
    config = pytest.importorskip("lpft.vision.config")
    plan = plan_sweep("digits", "tiny_clip", ["ft", "wiseft"], [1], str(tmp_path), lrs=[1e-3],
                      extra_args=["--limit", "40", "--wiseft-finetune", "linear"])
    # the runner's own default id: WiSE-FT's linear-classifier variant gets its own directory
    assert plan[1].run_id != run_id_for("digits", "tiny_clip", "wiseft", 1e-3, 1) and "-lc" in plan[1].run_id
    for r in plan:
        cfg = resolve_run_config(r.argv)
        assert cfg.run_id == r.run_id == config.default_run_id(cfg)
        assert r.config["limit"] == 40 and r.config["lr"] == 1e-3 and r.config["seed"] == 1
        assert "split_info" not in r.config  # derived by the run itself
        json.dumps(r.to_dict())
    with pytest.raises(ValueError, match="--no-such-flag"):
        plan_sweep("digits", "tiny_cnn", ["ft"], [0], str(tmp_path), lrs=[1e-3], extra_args=["--no-such-flag"])
    with pytest.raises(ValueError, match="runner flags"):
        plan_sweep("digits", "tiny_cnn", ["ft"], [0], str(tmp_path), lrs=[1e-3], extra_args=["--epochs", "x"])


def test_check_plan_refuses_a_stored_config_that_differs(tmp_path):
    plan = plan_sweep("digits", "tiny_cnn", ["lp", "ft"], [0], str(tmp_path), lrs=[1e-3], extra_args=["--limit", "40"])
    for r in plan:  # as the runner stores them, with bookkeeping and derived fields on top
        r.run_dir.mkdir(parents=True)
        stored = dict(r.config, split_info={"id_val": {"size": 40}}, environment={"torch": "x"}, out="elsewhere")
        (r.run_dir / "config.json").write_text(json.dumps(stored))
    check_plan(plan)  # the same configs: fine
    other = plan_sweep("digits", "tiny_cnn", ["lp", "ft"], [0], str(tmp_path), lrs=[1e-3],
                       extra_args=["--limit", "50", "--epochs", "3"])
    with pytest.raises(RunConfigMismatch) as e:
        run_sweep(other, runner=FakeRunner(), progress=False)
    msg = str(e.value)
    for r in other:
        assert r.run_id in msg
    assert "limit: 40 (stored) != 50 (requested)" in msg and "epochs: 2 (stored) != 3 (requested)" in msg
    assert not any(r.is_complete() for r in other)  # nothing ran
    # a hand-built SweepRun (no config) is resolved from its argv
    bare = [SweepRun(r.method, r.benchmark, r.backbone, r.seed, r.lr, r.run_id, r.out, r.argv) for r in other]
    with pytest.raises(RunConfigMismatch, match="limit"):
        check_plan(bare)


def test_interrupted_runs_are_resumed(tmp_path):
    plan = plan_sweep("digits", "tiny_cnn", ["ft"], [0, 1], str(tmp_path), lrs=[1e-3])
    (plan[0].run_dir / "ckpt").mkdir(parents=True)
    (plan[0].run_dir / "ckpt" / "last.pt").write_bytes(b"x")
    assert plan[0].is_resumable() and plan[0].launch_argv() == list(plan[0].argv) + ["--resume"]
    assert not plan[1].is_resumable() and plan[1].launch_argv() == list(plan[1].argv)
    fake = FakeRunner()
    run_sweep(plan, runner=fake, progress=False)
    assert fake.calls == [list(plan[0].argv) + ["--resume"], list(plan[1].argv)]
    assert not plan[0].is_resumable()  # complete now


def _acc_records(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "records.jsonl").read_text().splitlines()]
    return {(r["method"], r["eval_split"], r.get("alpha"), r.get("epoch")): r["value"]
            for r in recs if r["metric"] == "acc"}


SMOKE = ["--benchmark", "digits", "--backbone", "tiny_cnn", "--methods", "lp,ft", "--seeds", "0", "--lrs", "preset",
         "--quiet", "--no-distortion", "--lp-num-cs", "3"]


def test_real_sweep_refuses_another_limit_or_epochs(tmp_path, capsys):
    out = str(tmp_path / "runs")
    status = main([*SMOKE, "--out", out, "--limit", "40", "--epochs", "1"])
    assert len(status["done"]) == 2 and not status["failed"]
    plan = plan_sweep("digits", "tiny_cnn", ["lp", "ft"], [0], out, "preset", ["--quiet", "--no-distortion",
                                                                              "--lp-num-cs", "3", "--limit", "40"])
    before = {r.run_id: (r.records_path.stat().st_mtime_ns, _acc_records(r.run_dir)) for r in plan}
    assert all(v[1] for v in before.values())
    with pytest.raises(RunConfigMismatch) as e:
        main([*SMOKE, "--out", out, "--limit", "60", "--epochs", "1"])
    assert "limit: 40 (stored) != 60 (requested)" in str(e.value) and all(r.run_id in str(e.value) for r in plan)
    with pytest.raises(RunConfigMismatch, match="epochs: 1 .stored. != 2 .requested."):
        main([*SMOKE, "--out", out, "--limit", "40", "--epochs", "2"])
    with pytest.raises(RunConfigMismatch, match="epochs"):
        main([*SMOKE, "--out", out, "--limit", "40", "--epochs", "2", "--dry-run"])
    again = main([*SMOKE, "--out", out, "--limit", "40", "--epochs", "1"])  # the same sweep: all complete
    assert sorted(again["skipped"]) == sorted(before) and not again["done"]
    assert {r.run_id: (r.records_path.stat().st_mtime_ns, _acc_records(r.run_dir)) for r in plan} == before


def test_flyp_is_planned_with_its_release_learning_rate():
    from lpft.vision.sweep import paper_lr_grid, plan_sweep

    assert paper_lr_grid("flyp", "imagenet", "clip_vit_b16") == (1e-5,)
    runs = plan_sweep("digits", "tiny_clip", ["flyp"], [0, 1], "/tmp/never-written", "paper", [])
    assert [(r.method, r.lr, r.seed) for r in runs] == [("flyp", 1e-5, 0), ("flyp", 1e-5, 1)]
    assert all("--method flyp" in " ".join(r.launch_argv()) for r in runs)
