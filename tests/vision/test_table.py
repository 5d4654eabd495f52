"""lpft.vision.table: aggregation, learning-rate selection by ID val, published numbers, bad records."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from lpft.vision.records import RecordsError, append_records, make_record
from lpft.vision.table import aggregate, build_table, format_table, main


def rec(method, split, value, seed, *, lr=None, alpha=None, bench="digits", bb="tiny_cnn", metric="acc", **kw):
    shift = "id" if split.startswith("id_") else "ood"
    lr_s = "na" if lr is None else f"{lr:g}"
    return make_record(run_id=f"{bench}-{bb}-{method}-lr{lr_s}-seed{seed}", method=method, backbone=bb,
                       benchmark=bench, eval_split=split, shift=shift, metric=metric, value=value, seed=seed,
                       alpha=alpha, lr=lr, epoch=None, **kw)


def write(root, recs):
    """Write records into one run directory per run_id."""
    by_run = {}
    for r in recs:
        by_run.setdefault(r["run_id"], []).append(r)
    for rid, rs in by_run.items():
        append_records(root / rid / "records.jsonl", rs)


def csv_rows(rows):
    return list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))


def cell(rows, label, split):
    hits = [r for r in csv_rows(rows) if r["label"] == label and r["split"] == split]
    assert len(hits) == 1, (label, split, hits)
    return hits[0]


# ------------------------------------------------------------------------------------------ aggregation
def test_aggregate_mean_and_90pct_interval():
    vals = [0.80, 0.83, 0.89]
    a = aggregate(vals)
    assert a.n == 3
    assert a.mean == pytest.approx(np.mean(vals))
    assert a.ci == pytest.approx(1.645 * np.std(vals, ddof=1) / math.sqrt(3))
    one = aggregate([0.7])
    assert one.mean == 0.7 and one.ci is None and one.n == 1
    with pytest.raises(ValueError):
        aggregate([])


def test_table_cells_from_hand_made_records(tmp_path):
    ids = {0: 0.90, 1: 0.92, 2: 0.97}
    oods = {"typeset": {0: 0.50, 1: 0.60, 2: 0.55}, "corrupted": {0: 0.30, 1: 0.20, 2: 0.40}}
    recs = []
    for s in ids:
        recs += [rec("lp", "id_val", 0.9, s), rec("lp", "id_test", ids[s], s)]
        recs += [rec("lp", sp, v[s], s) for sp, v in oods.items()]
    write(tmp_path, recs)
    rows = build_table(tmp_path)
    c = cell(rows, "lp", "id_test")
    assert float(c["mean_pct"]) == pytest.approx(100 * np.mean(list(ids.values())))
    assert float(c["ci_pct"]) == pytest.approx(100 * 1.645 * np.std(list(ids.values()), ddof=1) / math.sqrt(3))
    assert int(c["n"]) == 3
    # the OOD average is taken per seed, then aggregated over seeds
    per_seed = [np.mean([oods["typeset"][s], oods["corrupted"][s]]) for s in range(3)]
    avg = cell(rows, "lp", "ood_avg")
    assert float(avg["mean_pct"]) == pytest.approx(100 * np.mean(per_seed))
    assert float(avg["ci_pct"]) == pytest.approx(100 * 1.645 * np.std(per_seed, ddof=1) / math.sqrt(3))
    md = format_table(rows, "markdown")
    assert f"{100 * np.mean(list(ids.values())):.1f} ± " in md
    assert "| method | lr | id_test |" in md and "ood_avg" in md


def test_single_seed_has_no_interval_and_partial_seeds_are_marked(tmp_path):
    recs = [rec("lp", "id_test", 0.8, 0), rec("lp", "typeset", 0.5, 0), rec("lp", "typeset", 0.6, 1),
            rec("lp", "id_test", 0.7, 1), rec("lp", "corrupted", 0.4, 0)]
    write(tmp_path, recs)
    rows = build_table(tmp_path)
    c = cell(rows, "lp", "corrupted")
    assert c["ci_pct"] == "" and c["n"] == "1"
    assert "40.0 (n=1)" in format_table(rows, "markdown")
    # ood_avg needs every OOD split for a seed: only seed 0 has both
    assert cell(rows, "lp", "ood_avg")["n"] == "1"


# --------------------------------------------------------------------------------------- LR selection
def test_lr_is_selected_by_id_val_never_by_ood(tmp_path):
    recs = []
    for s in range(3):
        # lr 1e-3: best ID val, worse OOD and worse ID test
        recs += [rec("ft", "id_val", 0.90 + 0.01 * s, s, lr=1e-3), rec("ft", "id_test", 0.80, s, lr=1e-3),
                 rec("ft", "typeset", 0.30, s, lr=1e-3)]
        # lr 1e-2: worse ID val, much better OOD and ID test
        recs += [rec("ft", "id_val", 0.85, s, lr=1e-2), rec("ft", "id_test", 0.95, s, lr=1e-2),
                 rec("ft", "typeset", 0.70, s, lr=1e-2)]
    write(tmp_path, recs)
    rows = build_table(tmp_path)
    (row,) = [r for r in rows if r.method == "ft"]
    assert row.lr == 1e-3
    assert row.lr_scores[1e-3] == pytest.approx(0.91)
    assert row.cells["typeset"].agg.mean == pytest.approx(0.30)
    assert row.cells["id_test"].agg.mean == pytest.approx(0.80)
    assert "| ft | 0.001 |" in format_table(rows, "markdown")


def test_per_epoch_records_are_ignored(tmp_path):
    recs = [rec("ft", "id_val", 0.5, 0, lr=1e-3), rec("ft", "id_val", 0.6, 0, lr=1e-2),
            rec("ft", "id_test", 0.5, 0, lr=1e-3), rec("ft", "id_test", 0.6, 0, lr=1e-2)]
    # an epoch record with a huge ID-val accuracy must not affect the selection
    recs.append(dict(rec("ft", "id_val", 0.99, 0, lr=1e-3), epoch=3))
    write(tmp_path, recs)
    (row,) = build_table(tmp_path)
    assert row.lr == 1e-2


def test_wiseft_rows_alpha_half_and_oracle(tmp_path):
    acc = {0.0: (0.6, 0.5), 0.5: (0.8, 0.6), 1.0: (0.9, 0.4)}  # alpha -> (id_test, ood)
    recs = []
    for s in range(2):
        for a, (i, o) in acc.items():
            for lr, shift in ((1e-3, 0.0), (1e-2, -0.1)):
                recs += [rec("wiseft", "id_val", i + shift, s, lr=lr, alpha=a, bn_stats="recomputed"),
                         rec("wiseft", "id_test", i + shift, s, lr=lr, alpha=a, bn_stats="recomputed"),
                         rec("wiseft", "typeset", o + 0.01 * s, s, lr=lr, alpha=a, bn_stats="recomputed")]
    write(tmp_path, recs)
    rows = build_table(tmp_path)
    half = [r for r in rows if r.alpha == 0.5]
    oracle = [r for r in rows if r.alpha == "oracle"]
    assert len(half) == 1 and len(oracle) == 1
    assert half[0].lr == 1e-3  # by the fine-tuned end's ID val
    assert half[0].cells["id_test"].agg.mean == pytest.approx(0.8)
    assert oracle[0].cells["id_test"].alpha == 1.0 and oracle[0].cells["id_test"].agg.mean == pytest.approx(0.9)
    assert oracle[0].cells["typeset"].alpha == 0.5 and oracle[0].cells["typeset"].agg.mean == pytest.approx(0.605)
    assert "oracle" in oracle[0].label and "BN recomputed" in oracle[0].label


# -------------------------------------------------------------------------------------- published
def test_published_numbers_and_differences_in_table(tmp_path):
    recs = []
    for s, (i, o) in enumerate([(0.95, 0.80), (0.97, 0.84)]):
        recs += [rec("lpft", "id_val", 0.9, s, lr=1e-4, bench="living17", bb="moco_v2_resnet50"),
                 rec("lpft", "id_test", i, s, lr=1e-4, bench="living17", bb="moco_v2_resnet50"),
                 rec("lpft", "ood_test", o, s, lr=1e-4, bench="living17", bb="moco_v2_resnet50")]
    write(tmp_path, recs)
    rows = build_table(tmp_path)
    c = cell(rows, "lpft", "id_test")
    assert float(c["published_pct"]) == 97.8 and float(c["published_ci_pct"]) == 0.2
    assert float(c["diff_pct"]) == pytest.approx(96.0 - 97.8)
    assert "Table 1" in c["published_source"] and "Kumar" in c["published_source"]
    o = cell(rows, "lpft", "ood_test")
    assert float(o["diff_pct"]) == pytest.approx(82.0 - 82.6)
    md = format_table(rows, "markdown")
    assert "| pub | Δ |" in md and "97.8" in md and "-1.8" in md
    tex = format_table(rows, "latex")
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"id\_test" in tex


def test_no_published_number_for_another_backbone(tmp_path):
    write(tmp_path, [rec("lpft", "id_test", 0.9, 0, lr=1e-4, bench="living17", bb="resnet50"),
                     rec("lpft", "ood_test", 0.7, 0, lr=1e-4, bench="living17", bb="resnet50")])
    rows = build_table(tmp_path)
    assert cell(rows, "lpft", "id_test")["published_pct"] == ""
    assert "pub" not in format_table(rows, "markdown").split("\n")[2]


# -------------------------------------------------------------------------------------- bad records
def _good_lines():
    return [json.dumps(rec("lp", "id_test", 0.8, 0)), json.dumps(rec("lp", "typeset", 0.5, 0))]


def _bad_file(tmp_path, last_line):
    p = tmp_path / "digits-tiny_cnn-lp-lrna-seed0" / "records.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text("\n".join(_good_lines() + [last_line]) + "\n")
    return p


@pytest.mark.parametrize(
    "last_line, expect",
    [
        (json.dumps(rec("lp", "corrupted", 0.4, 0))[:40], "not valid JSON"),  # truncated last line
        (json.dumps({k: v for k, v in rec("lp", "corrupted", 0.4, 0).items() if k != "seed"}), "missing field"),
        (json.dumps(rec("lp", "corrupted", 0.4, 0)).replace("0.4", "NaN"), "finite"),
        (json.dumps(rec("lp", "corrupted", 0.4, 0)).replace("0.4", "40.0"), "[0, 1]"),
        (json.dumps(rec("lp", "corrupted", 0.4, 0)).replace('"seed": 0', '"seed": "zero"'), "seed"),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path, last_line, expect):
    p = _bad_file(tmp_path, last_line)
    with pytest.raises(RecordsError) as ei:
        build_table(tmp_path)
    msg = str(ei.value)
    assert f"{p}:3" in msg and expect in msg


def test_duplicate_measurement_is_an_error(tmp_path):
    r = rec("lp", "id_test", 0.8, 0)
    append_records(tmp_path / "a" / "records.jsonl", [r])
    append_records(tmp_path / "b" / "records.jsonl", [dict(r, value=0.7)])
    with pytest.raises(RecordsError, match="duplicate") as ei:
        build_table(tmp_path)
    assert "a/records.jsonl:1" in str(ei.value) and "b/records.jsonl:1" in str(ei.value)


def test_missing_id_val_with_several_lrs_is_an_error(tmp_path):
    write(tmp_path, [rec("ft", "id_val", 0.8, 0, lr=1e-3), rec("ft", "id_test", 0.8, 0, lr=1e-3),
                     rec("ft", "id_test", 0.9, 0, lr=1e-2)])
    with pytest.raises(RecordsError, match="no id_val"):
        build_table(tmp_path)


def test_empty_or_missing_runs_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no records.jsonl"):
        build_table(tmp_path)
    with pytest.raises(FileNotFoundError):
        build_table(tmp_path / "nope")


def test_cli_formats(tmp_path, capsys):
    write(tmp_path, [rec("lp", "id_test", 0.8, 0), rec("lp", "typeset", 0.5, 0)])
    out = tmp_path / "t.csv"
    main(["--runs", str(tmp_path), "--format", "csv", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.strip() == out.read_text().strip()
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["split"] for r in rows} == {"id_test", "typeset"}
    main(["--runs", str(tmp_path)])
    assert "### digits / tiny_cnn" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path), "--format", "html"])


def test_summary_over_benchmarks(tmp_path):
    recs = [rec("lp", "id_test", 0.80, 0), rec("lp", "typeset", 0.40, 0), rec("lp", "corrupted", 0.60, 0),
            rec("lp", "id_test", 0.90, 0, bench="living17", bb="moco_v2_resnet50"),
            rec("lp", "ood_test", 0.70, 0, bench="living17", bb="moco_v2_resnet50"),
            rec("ft", "id_test", 0.95, 0, lr=1e-3, bench="living17", bb="moco_v2_resnet50"),
            rec("ft", "ood_test", 0.65, 0, lr=1e-3, bench="living17", bb="moco_v2_resnet50")]
    write(tmp_path, recs)
    md = format_table(build_table(tmp_path), "markdown")
    assert md.startswith("### summary")
    lines = md.splitlines()
    lp = next(ln for ln in lines if ln.startswith("| lp | 80.0"))
    # digits OOD = mean of typeset and corrupted; averages over the two benchmarks
    assert lp == "| lp | 80.0 | 50.0 | 90.0 | 70.0 | 85.0 | 60.0 |"
    ft = next(ln for ln in lines if ln.startswith("| ft |  |"))
    assert ft.endswith("|  |  |")  # ft has no digits runs: no average over benchmarks


# ----------------------------------------------------------------------------------- same-config rule
def _runs_with_configs(tmp_path, configs):
    """Two FT seeds at one learning rate; ``configs[seed]`` is written as that run's config.json (None: none)."""
    recs = []
    for s in (0, 1):
        recs += [rec("ft", "id_val", 0.8, s, lr=1e-3), rec("ft", "id_test", 0.8 + 0.01 * s, s, lr=1e-3),
                 rec("ft", "typeset", 0.5, s, lr=1e-3)]
    write(tmp_path, recs)
    for s, cfg in configs.items():
        if cfg is not None:
            (tmp_path / f"digits-tiny_cnn-ft-lr0.001-seed{s}" / "config.json").write_text(json.dumps(cfg))


def _cfg(seed, **kw):
    base = dict(method="ft", backbone="tiny_cnn", benchmark="digits", lr=1e-3, epochs=10, limit=None, seed=seed,
                run_id=f"digits-tiny_cnn-ft-lr0.001-seed{seed}", out="runs", device="cpu",
                environment={"torch": "2.x", "host": f"h{seed}"}, split_info={"id_train": {"size": 100}})
    return dict(base, **kw)


def test_seeds_of_one_cell_may_differ_only_in_seed_run_id_and_bookkeeping(tmp_path):
    # a randomly initialised backbone's weights id names its init seed: not a config difference
    _runs_with_configs(tmp_path, {0: _cfg(0, backbone_weights_id="random:seed0:79270a05"),
                                  1: _cfg(1, out="elsewhere", device="cuda", backbone_weights_id="random:seed1:c7ca60ad")})
    (row,) = build_table(tmp_path)
    assert row.cells["id_test"].agg.n == 2
    assert not any("same-config" in n for n in row.notes)


def test_per_seed_pretraining_is_one_cell_but_another_pretraining_setting_is_not(tmp_path):
    """The offline lab pretrains per seed ("simclr:<setting>:seed<s>:..."): seeds pool; settings do not."""
    from lpft.vision.rundir import RunConfigMismatch

    _runs_with_configs(tmp_path / "a", {0: _cfg(0, backbone_weights_id="simclr:s2000-p0.2:seed0:aa:bb"),
                                        1: _cfg(1, backbone_weights_id="simclr:s2000-p0.2:seed1:cc:dd")})
    (row,) = build_table(tmp_path / "a")
    assert row.cells["id_test"].agg.n == 2
    _runs_with_configs(tmp_path / "b", {0: _cfg(0, backbone_weights_id="simclr:s2000-p0.2:seed0:aa:bb"),
                                        1: _cfg(1, backbone_weights_id="simclr:s200-p0.2:seed1:cc:dd")})
    with pytest.raises(RunConfigMismatch, match="backbone_weights_id"):
        build_table(tmp_path / "b")


def test_a_smoke_run_and_a_real_run_in_one_cell_are_refused(tmp_path):
    from lpft.vision.rundir import RunConfigMismatch

    smoke = _cfg(1, limit=64, epochs=1, split_info={"id_train": {"size": 64}})
    _runs_with_configs(tmp_path, {0: _cfg(0), 1: smoke})
    with pytest.raises(RunConfigMismatch) as ei:
        build_table(tmp_path)
    msg = str(ei.value)
    assert "digits-tiny_cnn-ft-lr0.001-seed0" in msg and "digits-tiny_cnn-ft-lr0.001-seed1" in msg
    assert "limit: None (digits-tiny_cnn-ft-lr0.001-seed0) != 64 (digits-tiny_cnn-ft-lr0.001-seed1)" in msg
    assert "epochs: 10" in msg and "smoke run" in msg and "seed:" not in msg and "environment" not in msg
    assert "split_info.id_train.size: 100 (" in msg  # nested fields by their dotted key, not whole dicts
    # the plots pool the same cells, so they refuse the same runs
    from lpft.vision.plot import plot_runs

    with pytest.raises(RunConfigMismatch):
        plot_runs(tmp_path, tmp_path / "fig")
    # a real difference in the weights (not a seed-named random init) is refused too
    _runs_with_configs(tmp_path / "w", {0: _cfg(0, backbone_weights_id="sha256:aaaa"),
                                        1: _cfg(1, backbone_weights_id="sha256:bbbb")})
    with pytest.raises(RunConfigMismatch, match="backbone_weights_id"):
        build_table(tmp_path / "w")


def test_cells_with_only_some_configs_are_refused_and_without_any_are_noted(tmp_path):
    from lpft.vision.rundir import RunConfigMismatch

    _runs_with_configs(tmp_path / "a", {0: _cfg(0), 1: None})
    with pytest.raises(RunConfigMismatch, match="no config.json"):
        build_table(tmp_path / "a")
    _runs_with_configs(tmp_path / "b", {0: None, 1: None})
    rows = build_table(tmp_path / "b")
    assert any("same-config check not possible" in n and "2 run(s)" in n for n in rows[0].notes)
    assert "same-config check not possible" in format_table(rows, "markdown")


# ------------------------------------------------------------------------------------------ variants
def test_old_records_read_as_heldout_and_the_selection_set_is_stated(tmp_path):
    write(tmp_path, [rec("lp", "id_test", 0.8, 0), rec("lp", "typeset", 0.5, 0),
                     rec("ft", "id_test", 0.9, 0, lr=1e-3, selection="heldout"),
                     rec("ft", "typeset", 0.6, 0, lr=1e-3, selection="heldout")])
    rows = build_table(tmp_path)
    assert {r.selection for r in rows} == {"heldout"} and [r.label for r in rows] == ["lp", "ft"]
    md = format_table(rows, "markdown")
    assert "split held out from the ID training set (selection=heldout)" in md and "MIX" not in md
    assert {r["selection"] for r in csv_rows(rows)} == {"heldout"}


def test_mixed_selection_sets_are_separate_rows_and_flagged(tmp_path):
    write(tmp_path, [rec("ft", "id_test", 0.9, 0, lr=1e-3, selection="paper"),
                     rec("ft", "typeset", 0.6, 0, lr=1e-3, selection="paper"),
                     dict(rec("ft", "id_test", 0.8, 0, lr=1e-3), run_id="other"),
                     dict(rec("ft", "typeset", 0.5, 0, lr=1e-3), run_id="other")])
    rows = build_table(tmp_path)
    assert sorted(r.label for r in rows) == ["ft [sel. heldout]", "ft [sel. paper]"]
    assert float(cell(rows, "ft [sel. paper]", "id_test")["mean_pct"]) == pytest.approx(90.0)
    md = format_table(rows, "markdown")
    assert "MIX selection sets" in md and "| method | lr | sel. |" in md


def test_linear_head_wiseft_is_compared_with_the_lc_rows_only(tmp_path):
    recs = []
    for wft, rid in (("linear", "lin"), ("end_to_end", "e2e"), (None, "old")):
        extra = {} if wft is None else {"wiseft_finetune": wft}
        for a in (0.0, 0.5, 1.0):
            recs += [dict(rec("wiseft", sp, 0.8, 0, lr=3e-5, alpha=a, bench="imagenet", bb="clip_vit_l14_336",
                              **extra), run_id=rid) for sp in ("id_val", "id_test")]
    write(tmp_path / "l14", [r for r in recs if r["run_id"] != "old"])
    rows = build_table(tmp_path / "l14")
    lin = [r for r in rows if r.wiseft_finetune == "linear" and r.alpha == 0.5]
    e2e = [r for r in rows if r.wiseft_finetune == "end_to_end" and r.alpha == 0.5]
    assert lin[0].label == "wiseft (linear head) α=0.5" and e2e[0].label == "wiseft α=0.5"
    assert lin[0].cells["id_test"].published["value"] == 83.7  # WiSE-FT LC, alpha=0.5 (Table 1)
    assert lin[0].cells["id_test"].published["variant"] == "LC"
    assert e2e[0].cells["id_test"].published["value"] == 86.8  # WiSE-FT E2E, alpha=0.5
    oracle = [r for r in rows if r.wiseft_finetune == "linear" and r.alpha == "oracle"][0]
    assert oracle.cells["id_test"].published["value"] == 85.3
    assert "linear-classifier (LC)" in format_table(rows, "markdown")
    # an old record (no wiseft_finetune) reads as end-to-end
    write(tmp_path / "old", [r for r in recs if r["run_id"] == "old"])
    (old_half,) = [r for r in build_table(tmp_path / "old") if r.alpha == 0.5]
    assert old_half.wiseft_finetune == "end_to_end" and old_half.cells["id_test"].published["value"] == 86.8


def test_linear_head_wiseft_on_b16_uses_table5_lc_and_has_no_lc_oracle(tmp_path):
    recs = [rec("wiseft", "id_test", 0.78, 0, lr=None, alpha=a, bench="imagenet", bb="clip_vit_b16",
                wiseft_finetune="linear") for a in (0.0, 0.5, 1.0)]
    write(tmp_path, recs)
    rows = build_table(tmp_path)
    half = next(r for r in rows if r.alpha == 0.5)
    assert half.cells["id_test"].published["value"] == 78.2 and "Table 5" in half.cells["id_test"].published["table"]
    oracle = next(r for r in rows if r.alpha == "oracle")
    assert oracle.cells["id_test"].published is None  # never the end-to-end 82.6


@pytest.mark.parametrize("field, value", [("selection", "test"), ("wiseft_finetune", "head")])
def test_unknown_variant_values_are_errors(tmp_path, field, value):
    write(tmp_path, [rec("wiseft", "id_test", 0.8, 0, lr=1e-3, alpha=0.5, **{field: value})])
    with pytest.raises(RecordsError, match=f"{field} must be one of"):
        build_table(tmp_path)
