"""lpft.vision.robustness: the baseline CSV (units, splits, validation) and the logit-linear fit."""

from __future__ import annotations

import math

import pytest

from lpft.vision.robustness import baseline_line, effective_robustness, fit_logit_line, load_baseline


def _write(tmp_path, text, name="b.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_percent_and_fraction_files_give_the_same_line(tmp_path):
    pct = load_baseline(_write(tmp_path, "model,id_acc,ood_acc\na,60,30\nb,70,40\nc,80,55\n", "p.csv"))
    frac = load_baseline(_write(tmp_path, "model,id_acc,ood_acc\na,0.6,0.3\nb,0.7,0.4\nc,0.8,0.55\n", "f.csv"))
    lp, lf = baseline_line(pct, "any_split"), baseline_line(frac, "any_split")
    assert lp.slope == pytest.approx(lf.slope, abs=1e-12) and lp.intercept == pytest.approx(lf.intercept, abs=1e-12)
    assert pct.points[None][0] == ("a", pytest.approx(0.6), pytest.approx(0.3))


def test_two_points_define_the_line_exactly(tmp_path):
    b = load_baseline(_write(tmp_path, "model,id_acc,ood_acc\na,0.5,0.5\nb,0.8,0.5\n"))
    line = baseline_line(b, "x")
    assert line.slope == pytest.approx(0.0, abs=1e-12) and line.intercept == pytest.approx(0.0, abs=1e-12)
    assert effective_robustness(0.9, 0.6, line) == pytest.approx(0.1)


def test_ood_split_column_keeps_splits_apart(tmp_path):
    text = ("model,ood_split,id_acc,ood_acc,notes\n"
            "a,imagenet_r,0.6,0.3,x\nb,imagenet_r,0.7,0.4,\nc,imagenet_a,0.6,0.1,\nd,imagenet_a,0.8,0.2,\n")
    b = load_baseline(_write(tmp_path, text))
    assert b.splits == ["imagenet_a", "imagenet_r"]
    assert [p[0] for p in b.for_split("imagenet_r")] == ["a", "b"]
    assert baseline_line(b, "imagenet_sketch") is None
    r = baseline_line(b, "imagenet_r")
    lg = math.log
    assert r.slope == pytest.approx((lg(0.4 / 0.6) - lg(0.3 / 0.7)) / (lg(0.7 / 0.3) - lg(0.6 / 0.4)))


@pytest.mark.parametrize(
    "text, expect",
    [
        ("model,id,ood\na,0.5,0.4\n", r"missing column\(s\) \['id_acc', 'ood_acc'\]"),
        ("model,id_acc,ood_acc\n", "no models"),
        ("model,id_acc,ood_acc\na,0.5,0.4\nb,abc,0.3\n", r"b.csv:3: id_acc must be a number, got 'abc'"),
        ("model,id_acc,ood_acc\na,0.5,nan\nb,0.6,0.3\n", "must be finite"),
        ("model,id_acc,ood_acc\na,50,40\nb,100,30\n", r"strictly between 0 and 100 \(percent"),
        ("model,id_acc,ood_acc\na,0.5,0.4\nb,0.6,0\n", r"strictly between 0 and 1 \(a fraction"),
        ("model,id_acc,ood_acc\na,50,140\nb,60,30\n", "strictly between 0 and 100"),
        ("model,id_acc,ood_acc\na,0.5,0.4\na,0.6,0.3\n", "repeated"),
        ("model,id_acc,ood_acc\n,0.5,0.4\nb,0.6,0.3\n", "empty model"),
        ("model,id_acc,ood_acc,ood_split\na,0.5,0.4,\nb,0.6,0.3,x\n", "empty ood_split"),
        ("model,id_acc,ood_acc\na,0.5,0.4\n", "at least 2 points"),
        ("model,id_acc,ood_acc\na,0.5,0.4\nb,0.5,0.3\n", "different ID accuracies"),
        ("model,id_acc,ood_acc,ood_split\na,0.5,0.4,r\nb,0.6,0.3,r\nc,0.6,0.3,s\n", "split s"),
    ],
)
def test_bad_baseline_files_say_what_is_wrong(tmp_path, text, expect):
    with pytest.raises(ValueError, match=expect):
        load_baseline(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model, id_acc, ood_acc"):
        load_baseline(tmp_path / "none.csv")


def test_fit_needs_two_distinct_id_accuracies():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_logit_line([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], "baseline")
