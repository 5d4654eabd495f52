"""The lab's regime labels, criterion, table and figure (lpft/vision/lab/report.py) on hand-made results."""

import pytest

from lpft.vision.lab.report import MethodResult, SettingResult, criterion, format_report, lab_figure, regime
from lpft.vision.tablefmt import aggregate


def _method(name, lr, id_acc, ood, per_lr=None):
    res = MethodResult(name, lr, {"id_test": {s: id_acc for s in range(len(ood))},
                                  "typeset": dict(enumerate(ood)), "corrupted": dict(enumerate(ood))})
    res.per_lr = per_lr or {}
    return res


def _setting(tag, steps, share, lp, ft, lpft, ids=(0.98, 0.99, 0.99)):
    return SettingResult(tag, steps, share, {
        "lp": _method("lp", None, ids[0], lp),
        "ft": _method("ft", 0.03, ids[1], ft, {0.03: {"typeset": aggregate(ft)}, 0.1: {"typeset": aggregate(ft)}}),
        "lpft": _method("lpft", 0.003, ids[2], lpft, {0.003: {"typeset": aggregate(lpft)}}),
    })


GOOD = _setting("s2000-p0.2", 2000, 0.2, lp=[0.88, 0.90, 0.87, 0.89, 0.88], ft=[0.84, 0.86, 0.82, 0.80, 0.83],
                lpft=[0.89, 0.91, 0.88, 0.90, 0.89])
POOR = _setting("s0", 0, None, lp=[0.48, 0.50, 0.47], ft=[0.68, 0.69, 0.67], lpft=[0.60, 0.62, 0.61])


def test_regimes():
    assert regime(GOOD) == "good" and regime(POOR) == "poor"
    border = _setting("x", 200, 0.2, lp=[0.80, 0.84, 0.82], ft=[0.81, 0.83, 0.82], lpft=[0.83, 0.84, 0.85])
    assert regime(border) == "border"
    assert regime(SettingResult("y", 1, 0.2, {})) == "unknown"


def test_criterion():
    c = criterion(GOOD)
    assert c["holds"] and all(c["checks"].values())
    assert c["numbers"]["LP-FT wins"] == 5 and len(c["numbers"]["LP - FT per seed"]) == 5
    assert c["numbers"]["LP-FT - FT per seed"][0] == pytest.approx(0.05)
    poor = criterion(POOR)
    assert not poor["holds"] and not poor["checks"]["seeds >= 5"]
    assert not poor["checks"]["LP-FT OOD interval above FT's"]
    # LP-FT losing a point of ID accuracy to FT fails the criterion even with a clear OOD gain
    low_id = _setting("z", 2000, 0.2, lp=GOOD.methods["lp"].per_seed["typeset"].values(),
                      ft=GOOD.methods["ft"].per_seed["typeset"].values(),
                      lpft=GOOD.methods["lpft"].per_seed["typeset"].values(), ids=(0.98, 0.99, 0.975))
    assert not criterion(low_id)["holds"] and not criterion(low_id)["checks"]["LP-FT ID >= FT ID - 1 point"]
    assert criterion(SettingResult("y", 1, 0.2, {}))["holds"] is False


def test_table_and_figure(tmp_path):
    text = format_report([POOR, GOOD])
    assert "| s0 | 0 | - | LP |  | 98.0 ± 0.0 | 48.3 ± 1.5 |" in text
    assert "| s2000-p0.2 | 5 | good | +5.4 | +6.4 (5/5) | holds |" in text
    assert "| s0 | 3 | poor |" in text and "fails: seeds >= 5" in text
    assert "0.03: 83.0, 0.1: 83.0" in text
    paths = lab_figure([POOR, GOOD], tmp_path / "lab", share=0.2, full_budget=2000)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
