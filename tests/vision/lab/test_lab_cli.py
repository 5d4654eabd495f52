"""``python -m lpft.vision.lab --small``: the whole lab end to end (pretraining, runs, table, figure), resumable."""

import json

import pytest

from lpft.vision.lab.backbone import NAME
from lpft.vision.lab.cli import main
from lpft.vision.lab.sweep import FULL, SMALL, default_tags, plan_lab


def test_the_full_grid_plan():
    tags = default_tags(FULL)
    assert tags == ["s0", "s200-p0.2", "s2000-p0.2", "s2000-p0", "s2000-p0.5"]
    plan = plan_lab("/nonexistent/lab", tags, FULL.seeds, lrs=FULL.lrs)
    # per setting and seed: LP, 4 FT and 4 LP-FT learning rates, 1 WiSE-FT
    assert len(plan.all_runs) == len(tags) * len(FULL.seeds) * 10
    run = plan.runs["s200-p0.2"][0]
    assert run.out == "/nonexistent/lab/s200-p0.2" and run.backbone == NAME
    assert ("--pretrained", "s200-p0.2") == tuple(run.argv[run.argv.index("--pretrained"):][:2])
    with pytest.raises(ValueError, match="methods"):
        plan_lab("/x", tags, (0,), methods=["zeroshot"])
    with pytest.raises(ValueError, match="duplicate"):
        plan_lab("/x", ["s0", "s0-p0.5"], (0,))


@pytest.mark.slow
def test_small_lab_end_to_end_and_resumable(tmp_path, capsys):
    out = tmp_path / "lab"
    res = main(["--small", "--out", str(out), "--threads", "2"])
    tags = default_tags(SMALL)
    assert res["status"] and all(not s["failed"] and len(s["done"]) == 8 for s in res["status"].values())
    for tag in tags:
        assert len(list((out / tag).glob("*/records.jsonl"))) == 8  # 2 seeds x (LP, FT, LP-FT, WiSE-FT)
    summary = json.loads((out / "lab_summary.json").read_text())
    assert [s["tag"] for s in summary["settings"]] == tags
    for s in summary["settings"]:
        assert s["seeds"] == 2 and s["regime"] in ("good", "poor", "border")
        assert set(s["methods"]) == {"lp", "ft", "lpft", "wiseft"}
        for m in s["methods"].values():
            assert m["typeset"]["n"] == 2 and 0.0 <= m["typeset"]["mean"] <= 1.0
        assert s["criterion"]["holds"] is False  # 2 seeds never meet the ">= 5 seeds" rule
    assert summary["pretraining"][f"{tags[1]}|seed0"]["source"] == "trained"
    table = (out / "lab_table.md").read_text()
    assert "| s0 | 0 | - | LP |" in table and "LP-FT" in table and "regime" in table
    assert all(p.is_file() and p.stat().st_size > 0 for p in res["figures"])
    # rerun: every run is complete and every checkpoint cached; nothing trains
    again = main(["--small", "--out", str(out)])
    assert all(len(s["skipped"]) == 8 and not s["done"] for s in again["status"].values())
    assert {v["source"] for v in again["summary"]["pretraining"].values()} <= {"cache", "init"}
    assert again["table"] == res["table"]
