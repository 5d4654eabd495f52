"""lpft.vision.plot: every figure written (PNG and PDF, non-empty) from hand-made records; effective robustness
only against an independent baseline, and the fit through the runs never called that."""

from __future__ import annotations

import math
import random
import re

import pytest
from matplotlib.text import Text

from lpft.vision.plot import fit_through_runs, main, make_plots, scatter_figure
from lpft.vision.records import append_records, make_record
from lpft.vision.robustness import baseline_line, effective_robustness, load_baseline
from lpft.vision.table import build_series, load_records

SPLITS = (("id_val", "id"), ("id_test", "id"), ("typeset", "ood"), ("corrupted", "ood"))
KINDS = ("id_vs_ood", "logit_residual", "acc_vs_alpha", "feature_distortion")
SLOPE, ICPT = 0.8, -0.7  # the known baseline line, logit(ood) = SLOPE * logit(id) + ICPT


def logit(p):
    return math.log(p / (1 - p))


def on_line(i):
    return 1 / (1 + math.exp(-(SLOPE * logit(i) + ICPT)))


def write_baseline(path, percent=True, ood_split=None):
    """Six standard models exactly on the known line (in percent or as fractions)."""
    f = 100.0 if percent else 1.0
    head = "model,id_acc,ood_acc" + (",ood_split" if ood_split else "")
    rows = [f"m{j},{f * i!r},{f * on_line(i)!r}" + (f",{ood_split}" if ood_split else "")
            for j, i in enumerate((0.55, 0.62, 0.7, 0.78, 0.86, 0.93))]
    path.write_text("\n".join([head] + rows) + "\n")
    return path


def all_text(fig):
    return [t.get_text() for t in fig.findobj(Text)]


def _rec(run_id, method, split, shift, value, seed, lr, alpha=None, metric="acc", **kw):
    return make_record(run_id=run_id, method=method, backbone="tiny_cnn", benchmark="digits", eval_split=split,
                       shift=shift, metric=metric, value=value, seed=seed, alpha=alpha, lr=lr, epoch=None, **kw)


def write_runs(root, methods=("lp", "ft", "lpft", "wiseft"), distortion=True, seeds=(0, 1)):
    rng = random.Random(0)
    level = {"lp": 0.7, "ft": 0.85, "lpft": 0.88}
    for method in methods:
        for lr in ([None] if method == "lp" else [1e-3, 1e-2]):
            for seed in seeds:
                rid = f"digits-tiny_cnn-{method}-lr{'na' if lr is None else f'{lr:g}'}-seed{seed}"
                recs = []
                for alpha in ([None] if method != "wiseft" else [0.0, 0.25, 0.5, 0.75, 1.0]):
                    for bn in ([None] if alpha is None else ["interpolated", "recomputed"]):
                        for split, shift in SPLITS:
                            base = level.get(method, 0.5 + 0.3 * (alpha or 0))
                            v = base - (0.25 if shift == "ood" else 0) + rng.uniform(-0.03, 0.03)
                            extra = {"bn_stats": bn} if bn else {}
                            recs.append(_rec(rid, method, split, shift, v, seed, lr, alpha, **extra))
                if distortion and method in ("ft", "lpft"):
                    for split, shift in SPLITS[1:]:
                        scale = 0.02 if method == "ft" else 0.001
                        recs.append(_rec(rid, method, split, shift, scale * rng.uniform(0.9, 1.1), seed, lr,
                                         metric="feature_sq_change"))
                        recs.append(_rec(rid, method, split, shift, 1 - 5 * scale, seed, lr, metric="feature_cosine"))
                append_records(root / "runs" / rid / "records.jsonl", recs)
    return root / "runs"


def _check_files(paths, expected_stems):
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{s}.{ext}" for s in expected_stems for ext in ("png", "pdf"))
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000, p
        assert data[:4] == (b"\x89PNG" if p.suffix == ".png" else b"%PDF"), p


def test_every_plot_written_and_non_empty(tmp_path):
    runs = write_runs(tmp_path)
    paths = make_plots(load_records(runs), tmp_path / "fig")
    _check_files(paths, [f"digits-tiny_cnn-{k}" for k in KINDS])
    assert all(p.parent == tmp_path / "fig" for p in paths)
    assert not list((tmp_path / "fig").glob("*.tmp"))  # atomic writes leave no temporary files


def test_only_supported_figures_without_wiseft_or_distortion(tmp_path):
    runs = write_runs(tmp_path, methods=("lp", "ft"), distortion=False, seeds=(0,))
    paths = make_plots(load_records(runs), tmp_path / "fig")
    _check_files(paths, [f"digits-tiny_cnn-{k}" for k in ("id_vs_ood", "logit_residual")])


def test_cli_prints_paths(tmp_path, capsys):
    runs = write_runs(tmp_path, methods=("lp", "lpft"), seeds=(0, 1, 2))
    paths = main(["--runs", str(runs), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out.split()
    assert printed == [str(p) for p in paths]
    _check_files(paths, [f"digits-tiny_cnn-{k}" for k in ("id_vs_ood", "logit_residual", "feature_distortion")])


def test_cli_with_baseline_writes_effective_robustness(tmp_path, capsys):
    runs = write_runs(tmp_path, methods=("lp", "ft"), distortion=False, seeds=(0,))
    csv_path = write_baseline(tmp_path / "baseline.csv")
    paths = main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--baseline", str(csv_path)])
    _check_files(paths, [f"digits-tiny_cnn-{k}" for k in ("id_vs_ood", "effective_robustness")])
    with pytest.raises(FileNotFoundError, match="baseline CSV"):
        main(["--runs", str(runs), "--out", str(tmp_path / "o2"), "--baseline", str(tmp_path / "nope.csv")])


def test_bad_records_stop_plotting(tmp_path):
    runs = write_runs(tmp_path, methods=("lp",), seeds=(0,))
    f = next(runs.rglob("records.jsonl"))
    f.write_text(f.read_text()[:-30])  # truncated last line
    with pytest.raises(ValueError, match=f"{f}:"):
        main(["--runs", str(runs), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _line_records(above=0.05):
    """FT at 4 learning rates exactly on the known line, plus LP-FT ``above`` the line at ID 0.75."""
    recs = []
    for k, lr in enumerate([1e-3, 3e-3, 1e-2, 3e-2]):
        i = 0.5 + 0.1 * k
        rid = f"ft-{k}"
        recs += [_rec(rid, "ft", "id_val", "id", 0.5 + 0.01 * k, 0, lr), _rec(rid, "ft", "id_test", "id", i, 0, lr),
                 _rec(rid, "ft", "typeset", "ood", on_line(i), 0, lr)]
    recs += [_rec("lpft", "lpft", "id_test", "id", 0.75, 0, 1e-4),
             _rec("lpft", "lpft", "typeset", "ood", on_line(0.75) + above, 0, 1e-4)]
    # WiSE-FT points far above the line must not enter the fit through the runs
    recs += [_rec("w", "wiseft", "id_test", "id", 0.6, 0, 1e-3, alpha=0.5),
             _rec("w", "wiseft", "typeset", "ood", 0.9, 0, 1e-3, alpha=0.5)]
    return recs


@pytest.mark.parametrize("percent", [True, False])
def test_effective_robustness_against_an_independent_baseline_is_exact(tmp_path, percent):
    baseline = load_baseline(write_baseline(tmp_path / "b.csv", percent=percent))
    line = baseline_line(baseline, "typeset")
    assert line.source == "baseline" and line.n == 6
    assert line.slope == pytest.approx(SLOPE, abs=1e-12) and line.intercept == pytest.approx(ICPT, abs=1e-12)
    assert effective_robustness(0.75, on_line(0.75) + 0.05, line) == pytest.approx(0.05, abs=1e-12)
    assert effective_robustness(0.6, on_line(0.6), line) == pytest.approx(0.0, abs=1e-12)
    # the figure's legend reports the LP-FT run's effective robustness, +5.0 pp, and FT's on-line points at 0
    (group,) = build_series(_line_records(0.05)).values()
    texts = all_text(scatter_figure("t", group, logit_axes=True, baseline=baseline))
    assert any(t.startswith("lpft (effective robustness +5.0 pp)") for t in texts), texts
    assert any("baseline: logit-linear fit to 6 independent models" in t for t in texts)


def test_fit_through_the_runs_is_a_residual_never_effective_robustness():
    (group,) = build_series(_line_records(0.0)).values()
    line = fit_through_runs(group, "typeset")
    assert line.source == "runs" and line.n == 5
    assert line.slope == pytest.approx(SLOPE) and line.intercept == pytest.approx(ICPT)
    assert line.residual(0.65, on_line(0.65) + 0.05) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="independent baseline"):
        effective_robustness(0.65, on_line(0.65), line)
    assert fit_through_runs([s for s in group if s.method == "wiseft"], "typeset") is None  # < 3 points
    # the self-fit figure never says "effective robustness", and does say what it shows
    (group,) = build_series(_line_records(0.05)).values()
    texts = all_text(scatter_figure("t", group, logit_axes=True))
    joined = "\n".join(texts)
    assert "effective robustness" not in joined.lower() and not re.search(r"\bER\b", joined)
    assert "residual from a logit-linear fit through these runs" in joined
    assert any(t.startswith("lpft (residual ") for t in texts)


def test_baseline_split_that_no_run_has_is_an_error(tmp_path):
    runs = write_runs(tmp_path, methods=("lp", "ft"), distortion=False, seeds=(0,))
    csv_path = write_baseline(tmp_path / "b.csv", ood_split="imagenet_r")
    with pytest.raises(ValueError, match=r"imagenet_r.*matches no OOD column"):
        main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--baseline", str(csv_path)])
    # a baseline for one split: that panel shows effective robustness, the others say they have no baseline
    csv_path = write_baseline(tmp_path / "b2.csv", ood_split="typeset")
    (group,) = build_series(load_records(runs)).values()
    texts = all_text(scatter_figure("t", group, logit_axes=True, baseline=load_baseline(csv_path)))
    assert "no baseline models for this split" in texts and "effective robustness vs independent baseline" in texts
