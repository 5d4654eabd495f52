"""WiSE-FT of any finished run (``--method wiseft --wiseft-from RUN``, lpft.vision.wiseft_from): alpha = 0 is the
source's starting point, alpha = 1 the source's own result, for FT, LP-FT (tiny_cnn) and FLYP (tiny_clip) sources;
tables keep these runs apart from plain WiSE-FT; bad sources and settings are clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.records import read_records  # noqa: E402
from lpft.vision.run import main  # noqa: E402

SMALL = ["--limit", "48", "--batch-size", "16", "--epochs", "1", "--quiet", "--no-distortion"]
SOURCES = {  # name -> argv of the source run
    "ft": ["--backbone", "tiny_cnn", "--method", "ft", "--lr", "1e-3"],  # the plain WiSE-FT stage's lr: one cell
    "lpft": ["--backbone", "tiny_cnn", "--method", "lpft", "--lp-num-cs", "4"],
    "flyp": ["--backbone", "tiny_clip", "--method", "flyp"],
}
ALPHAS = ["--alphas", "0,0.5,1"]


def _final(recs, metric="acc", **match):
    """``{split: value}`` of the selected model's records matching ``match`` (``stage`` None unless given)."""
    match.setdefault("stage", None)
    out = {}
    for r in recs:
        if r["metric"] == metric and r.get("epoch") is None and all(r.get(k) == v for k, v in match.items()):
            assert r["eval_split"] not in out, (r, match)
            out[r["eval_split"]] = r["value"]
    return out


@pytest.fixture(scope="module")
def ft_pair(tmp_path_factory):
    """A small FT run and its WiSE-FT at alpha 0 and 1 (seconds)."""
    root = tmp_path_factory.mktemp("ft_pair")
    src = main([*SMALL, *SOURCES["ft"], "--out", str(root)])
    return src, main(["--quiet", "--method", "wiseft", "--wiseft-from", str(src), "--alphas", "0,1",
                      "--out", str(root)])


def test_wiseft_of_an_ft_run_starts_at_its_start_and_ends_at_its_result(ft_pair):
    src_dir, wf_dir = ft_pair
    src, wf = read_records(src_dir / "records.jsonl"), read_records(wf_dir / "records.jsonl")
    assert _final(wf, alpha=1.0, bn_stats="interpolated") == _final(src)
    assert _final(wf, "nll", alpha=1.0, bn_stats="interpolated") == pytest.approx(_final(src, "nll"), abs=1e-6)
    epoch0 = [r["value"] for r in src if r["metric"] == "acc" and r.get("epoch") == 0 and r["eval_split"] == "id_val"]
    assert _final(wf, alpha=0.0, bn_stats="interpolated")["id_val"] == epoch0[0]  # the initial model (init_head.pt)
    assert all(r["wiseft_source"] == "ft" and r["method"] == "wiseft" for r in wf)
    assert wf_dir.name == f"{src_dir.name}-wiseft"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wiseft_from")
    out = {name: main([*SMALL, *argv, "--out", str(root / "runs")]) for name, argv in SOURCES.items()}
    out["zeroshot"] = main([*SMALL, "--backbone", "tiny_clip", "--method", "zeroshot", "--out", str(root / "ref")])
    for name in SOURCES:
        out[f"{name}-wiseft"] = main([*SMALL[:2], "--quiet", "--method", "wiseft", "--wiseft-from", str(out[name]),
                                      *ALPHAS, "--out", str(root / "runs")])
    return out


@pytest.mark.slow  # the runs fixture: five runs (about a minute on 2 cores)
@pytest.mark.parametrize("name", list(SOURCES))
def test_alpha_one_is_the_source_runs_own_result(runs, name):
    src, wf = read_records(runs[name] / "records.jsonl"), read_records(runs[f"{name}-wiseft"] / "records.jsonl")
    bn = "interpolated" if name != "flyp" else None  # tiny_cnn has BatchNorm: both variants are reported
    for metric in ("acc", "ece", "nll"):
        want, got = _final(src, metric), _final(wf, metric, alpha=1.0, bn_stats=bn)
        assert got.keys() == want.keys() == {"id_val", "id_test", "typeset", "corrupted"}
        if metric == "acc":
            assert got == want  # the same model, evaluated the same way
        else:
            assert got == pytest.approx(want, abs=1e-6)
    if bn:  # the endpoints are reported as they are in the re-estimated variant too
        assert _final(wf, alpha=1.0, bn_stats="recomputed") == _final(src)


@pytest.mark.slow  # the runs fixture: five runs (about a minute on 2 cores)
def test_alpha_zero_is_where_fine_tuning_started(runs):
    # LP-FT: the LP model, which the LP-FT run reports as its LP stage
    lpft, wf = read_records(runs["lpft"] / "records.jsonl"), read_records(runs["lpft-wiseft"] / "records.jsonl")
    assert _final(wf, alpha=0.0, bn_stats="interpolated") == _final(lpft, stage="lp")
    assert _final(wf, "nll", alpha=0.0, bn_stats="interpolated") == pytest.approx(_final(lpft, "nll", stage="lp"),
                                                                                  abs=1e-5)
    # FT: the pretrained backbone with the random head of init_head.pt, the model of the source's epoch 0
    for name in ("ft", "flyp"):
        src, wf = read_records(runs[name] / "records.jsonl"), read_records(runs[f"{name}-wiseft"] / "records.jsonl")
        epoch0 = [r["value"] for r in src if r["metric"] == "acc" and r.get("epoch") == 0]
        bn = "interpolated" if name == "ft" else None
        assert _final(wf, alpha=0.0, bn_stats=bn)["id_val"] == epoch0[0]
    # FLYP: the zero-shot CLIP model, both towers: the zero-shot run's records
    zs, wf = read_records(runs["zeroshot"] / "records.jsonl"), read_records(runs["flyp-wiseft"] / "records.jsonl")
    assert _final(wf, alpha=0.0) == _final(zs)
    assert _final(wf, "ece", alpha=0.0) == pytest.approx(_final(zs, "ece"), abs=1e-5)
    assert _final(wf, alpha=0.5) != _final(wf, alpha=0.0) or _final(wf, alpha=0.5) != _final(wf, alpha=1.0)


@pytest.mark.slow  # the runs fixture: five runs (about a minute on 2 cores)
def test_records_and_config_name_the_source_and_nothing_trains(runs):
    for name in SOURCES:
        run_dir = runs[f"{name}-wiseft"]
        assert run_dir.name == f"{runs[name].name}-wiseft"
        recs = read_records(run_dir / "records.jsonl")
        assert recs and all(r["method"] == "wiseft" and r["wiseft_source"] == name for r in recs)
        assert sorted({r["alpha"] for r in recs}) == [0.0, 0.5, 1.0]
        cfg = json.loads((run_dir / "config.json").read_text())
        src_cfg = json.loads((runs[name] / "config.json").read_text())
        info = cfg["wiseft_source"]
        assert info["run_dir"] == str(runs[name].resolve()) and info["run_id"] == runs[name].name
        assert info["method"] == name and len(info["config_sha256"]) == 64 and len(info["recipe_sha256"]) == 64
        assert cfg["lr"] == src_cfg["lr"] and cfg["backbone"] == src_cfg["backbone"] and cfg["epochs"] is None
        assert cfg["provenance"]["backbone"] == "wiseft_from"
        assert not (run_dir / "ckpt").exists() and not (run_dir / "history.json").exists()
    with pytest.raises(ValueError, match="--wiseft-finetune does not apply"):  # the linear-head variant trains
        main(["--method", "wiseft", "--wiseft-from", str(runs["flyp"]), "--wiseft-finetune", "linear"])


@pytest.mark.slow  # the runs fixture: five runs (about a minute on 2 cores)
def test_table_keeps_wiseft_of_a_run_apart_from_plain_wiseft(runs, tmp_path):
    from lpft.vision.table import build_rows, build_series, load_records

    root = runs["ft"].parent
    plain = main([*SMALL, "--backbone", "tiny_cnn", "--method", "wiseft", "--lp-num-cs", "4", *ALPHAS,
                  "--out", str(root)])  # the same benchmark, backbone, learning rate (1e-3) and seed as ft-wiseft
    seed1 = main([*SMALL, *SOURCES["ft"], "--seed", "1", "--out", str(root)])
    main(["--limit", "48", "--quiet", "--method", "wiseft", "--wiseft-from", str(seed1), "--seed", "1", *ALPHAS,
          "--out", str(root)])
    groups = build_series(load_records(root))
    wiseft = {(s.options, s.bn_stats): s for s in groups[("digits", "tiny_cnn")] if s.method == "wiseft"}
    assert set(wiseft) == {(None, "interpolated"), (None, "recomputed"), ("from ft", "interpolated"),
                           ("from ft", "recomputed"), ("from lpft", "interpolated"), ("from lpft", "recomputed")}
    mine, other = wiseft[("from ft", "interpolated")], wiseft[(None, "interpolated")]
    assert mine.lrs == other.lrs == [1e-3]
    # the two seeds of WiSE-FT-from-FT pool into one cell (their sources differ only by seed); plain WiSE-FT stays out
    assert set(mine.seeds_of(1e-3, 1.0, "id_test")) == {0, 1} and set(other.seeds_of(1e-3, 1.0, "id_test")) == {0}
    assert mine.runs[1e-3] == {str(runs["ft-wiseft"]), str(root / f"{seed1.name}-wiseft")}
    assert plain.name not in {Path(d).name for d in mine.runs[1e-3]}
    assert "from ft" in mine.label and mine.label != other.label
    rows = [r for r in build_rows(groups) if r.method == "wiseft" and "from" in r.label]
    assert rows and all(c.published is None for r in rows for c in r.cells.values())


def test_table_families_split_on_the_source_of_a_wiseft_run(tmp_path):
    """Records alone (no runs): the same benchmark, backbone, lr, seed and alpha, with and without wiseft_source."""
    from lpft.vision.records import make_record
    from lpft.vision.table import build_series, load_records

    for run_id, source in (("plain", None), ("from-ft", "ft"), ("from-lpft", "lpft")):
        extra = {"wiseft_source": source} if source else {}
        recs = [make_record(run_id=run_id, method="wiseft", backbone="tiny_cnn", benchmark="digits", eval_split=split,
                            shift=shift, metric="acc", value=value, seed=0, alpha=1.0, lr=1e-3, **extra)
                for split, shift, value in (("id_val", "id", 0.5), ("id_test", "id", 0.4), ("typeset", "ood", 0.3))]
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    fams = build_series(load_records(tmp_path))[("digits", "tiny_cnn")]
    assert sorted(s.options or "" for s in fams) == ["", "from ft", "from lpft"]  # three families, not one cell
    assert all(s.seeds_of(1e-3, 1.0, "id_test") == {0: 0.4} for s in fams)


def _fake_run(path: Path, method: str, records: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"method": method, "benchmark": "digits", "seed": 0}))
    if records:
        (path / "records.jsonl").write_text("")
    return path


def test_bad_sources_are_clear_errors(tmp_path):
    base = ["--method", "wiseft", "--quiet", "--out", str(tmp_path / "out"), "--wiseft-from"]
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        main([*base, str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        main([*base, str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="not complete.*--resume"):
        main([*base, str(_fake_run(tmp_path / "running", "ft", records=False))])
    with pytest.raises(ValueError, match="trains no network"):
        main([*base, str(_fake_run(tmp_path / "lp", "lp"))])
    with pytest.raises(ValueError, match="WiSE-FT run already"):
        main([*base, str(_fake_run(tmp_path / "wise", "wiseft"))])
    with pytest.raises(ValueError, match="applies to --method wiseft"):
        main(["--method", "ft", "--wiseft-from", str(_fake_run(tmp_path / "ft", "ft")), "--out", str(tmp_path)])


def test_settings_that_differ_from_the_source_are_clear_errors(ft_pair, tmp_path):
    src = str(ft_pair[0])
    base = ["--method", "wiseft", "--quiet", "--out", str(tmp_path), "--wiseft-from", src]
    with pytest.raises(ValueError, match="seed: 1 here, 0 in the source"):
        main([*base, "--seed", "1"])
    with pytest.raises(ValueError) as e:
        main([*base, "--backbone", "tiny_clip", "--limit", "10", "--lr", "0.5"])
    assert all(f in str(e.value) for f in ("backbone: 'tiny_clip' here, 'tiny_cnn'", "limit: 10 here, 48", "lr:"))
    with pytest.raises(ValueError, match="trains nothing"):
        main([*base, "--l2sp-alpha", "0.1"])
    with pytest.raises(ValueError, match="--wiseft-finetune"):
        main([*base, "--wiseft-finetune", "linear"])
    copy = tmp_path / "copy"
    shutil.copytree(ft_pair[0], copy)
    (copy / "init_head.pt").unlink()
    with pytest.raises(FileNotFoundError, match="init_head.pt"):
        main([*base[:-1], str(copy), "--run-id", "nohead"])
    assert not (tmp_path / "nohead" / "records.jsonl").exists()


def test_seed_and_benchmark_are_taken_from_the_source(tmp_path):
    from lpft.vision.run import build_parser, config_from_args
    from lpft.vision.wiseft_from import inherit_source

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"method": "ft", "benchmark": "digits", "seed": 3,
                                                 "backbone": "tiny_cnn", "run_id": "src"}))
    (src / "records.jsonl").write_text("")
    (src / "history.json").write_text(json.dumps({"selected_checkpoint": "ckpt/best.pt"}))
    (src / "ckpt").mkdir()
    (src / "ckpt" / "best.pt").write_bytes(b"")
    cfg = config_from_args(build_parser().parse_args(["--method", "wiseft", "--wiseft-from", str(src)]))
    assert cfg.seed is None and cfg.benchmark is None  # not given: left for the source to fill
    full, inherited = inherit_source(cfg)
    assert (full.seed, full.benchmark, full.backbone) == (3, "digits", "tiny_cnn")
    assert {"seed", "benchmark", "backbone"} <= set(inherited)
    plain = config_from_args(build_parser().parse_args(["--method", "ft"]))
    assert (plain.seed, plain.benchmark) == (0, "digits")
