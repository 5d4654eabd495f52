"""lpft.vision.table --metric: calibration tables (ECE, NLL) with the learning rate still chosen by accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from tests.vision.test_table import cell, rec, write
from lpft.vision.table import build_table, format_table, main


def _two_lr_ft(tmp_path):
    """FT at two learning rates: lr 0.1 wins ID-val accuracy, lr 0.01 is better calibrated everywhere."""
    recs = []
    for seed in range(3):
        for lr, val, ece, nll in ((0.1, 0.95, 0.20 + 0.01 * seed, 0.9), (0.01, 0.90, 0.05, 0.3)):
            for split, acc in (("id_val", val), ("id_test", val - 0.01), ("typeset", 0.6)):
                recs += [rec("ft", split, acc, seed, lr=lr), rec("ft", split, ece, seed, lr=lr, metric="ece"),
                         rec("ft", split, nll + 0.1 * seed, seed, lr=lr, metric="nll")]
    write(tmp_path, recs)


def test_ece_cells_come_from_the_accuracy_selected_lr(tmp_path):
    _two_lr_ft(tmp_path)
    acc_rows = build_table(tmp_path)
    ece_rows = build_table(tmp_path, metric="ece")
    assert [r.lr for r in acc_rows] == [r.lr for r in ece_rows] == [0.1]  # never chosen by calibration
    c = cell(ece_rows, "ft", "typeset")
    assert float(c["mean_pct"]) == pytest.approx(100 * np.mean([0.20, 0.21, 0.22]))
    assert c["metric"] == "ece" and cell(acc_rows, "ft", "typeset")["metric"] == "acc"
    md = format_table(ece_rows, "markdown")
    assert "expected calibration error in %" in md and "21.0 ± " in md


def test_nll_is_shown_in_nats_and_the_wiseft_oracle_minimises_it(tmp_path):
    recs = []
    for seed in range(2):
        for a, nll in ((0.0, 0.8), (0.5, 0.4), (1.0, 0.6)):
            for split in ("id_val", "id_test", "typeset"):
                recs += [rec("wiseft", split, 0.9 - 0.1 * a, seed, lr=1e-3, alpha=a),
                         rec("wiseft", split, nll + 0.01 * seed, seed, lr=1e-3, alpha=a, metric="nll")]
    write(tmp_path, recs)
    rows = build_table(tmp_path, metric="nll")
    oracle = next(r for r in rows if r.alpha == "oracle")
    assert oracle.cells["typeset"].alpha == 0.5  # lowest NLL, although alpha 0 has the highest accuracy
    assert oracle.cells["typeset"].agg.mean == pytest.approx(0.405)
    assert "0.405" in format_table(rows, "markdown")
    acc_oracle = next(r for r in build_table(tmp_path) if r.alpha == "oracle")
    assert acc_oracle.cells["typeset"].alpha == 0.0


def test_cli_metric_flag_and_bad_metric(tmp_path, capsys):
    _two_lr_ft(tmp_path)
    text = main(["--runs", str(tmp_path), "--metric", "nll", "--format", "csv"])
    row = [ln for ln in text.splitlines() if ",typeset," in ln][0]
    assert row.split(",")[-1] == "nll" and float(row.split(",")[10]) == pytest.approx(1.0)  # 0.9 + 0.1 mean
    with pytest.raises(ValueError, match="metric must be one of acc, ece, nll"):
        build_table(tmp_path, metric="auc")
    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path), "--metric", "auc"])
