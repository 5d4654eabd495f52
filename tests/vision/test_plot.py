"""lpft.vision.plot: every figure written (PNG and PDF, non-empty) from hand-made records."""

from __future__ import annotations

import random

import pytest

from lpft.vision.plot import main, make_plots
from lpft.vision.records import append_records, make_record
from lpft.vision.table import load_records

SPLITS = (("id_val", "id"), ("id_test", "id"), ("typeset", "ood"), ("corrupted", "ood"))
KINDS = ("id_vs_ood", "effective_robustness", "acc_vs_alpha", "feature_distortion")


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
    _check_files(paths, [f"digits-tiny_cnn-{k}" for k in ("id_vs_ood", "effective_robustness")])


def test_cli_prints_paths(tmp_path, capsys):
    runs = write_runs(tmp_path, methods=("lp", "lpft"), seeds=(0, 1, 2))
    paths = main(["--runs", str(runs), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out.split()
    assert printed == [str(p) for p in paths]
    _check_files(paths, [f"digits-tiny_cnn-{k}" for k in ("id_vs_ood", "effective_robustness", "feature_distortion")])


def test_bad_records_stop_plotting(tmp_path):
    runs = write_runs(tmp_path, methods=("lp",), seeds=(0,))
    f = next(runs.rglob("records.jsonl"))
    f.write_text(f.read_text()[:-30])  # truncated last line
    with pytest.raises(ValueError, match=f"{f}:"):
        main(["--runs", str(runs), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_baseline_fit_recovers_a_logit_line_and_effective_robustness(tmp_path):
    from lpft.vision.plot import baseline_fit, effective_robustness
    from lpft.vision.table import build_series

    def logit(p):
        import math

        return math.log(p / (1 - p))

    def sigmoid(z):
        import math

        return 1 / (1 + math.exp(-z))

    slope, icpt = 0.8, -0.7
    recs = []
    for k, lr in enumerate([1e-3, 3e-3, 1e-2, 3e-2]):
        i = 0.5 + 0.1 * k
        o = sigmoid(slope * logit(i) + icpt)
        rid = f"ft-{k}"
        recs += [_rec(rid, "ft", "id_val", "id", 0.5, 0, lr), _rec(rid, "ft", "id_test", "id", i, 0, lr),
                 _rec(rid, "ft", "typeset", "ood", o, 0, lr)]
    # WiSE-FT points far above the line must not enter the fit
    recs += [_rec("w", "wiseft", "id_test", "id", 0.6, 0, 1e-3, alpha=0.5),
             _rec("w", "wiseft", "typeset", "ood", 0.9, 0, 1e-3, alpha=0.5)]
    (group,) = build_series(recs).values()
    fit = baseline_fit(group, "typeset")
    assert fit[0] == pytest.approx(slope) and fit[1] == pytest.approx(icpt) and fit[2] == 4
    assert effective_robustness(0.65, sigmoid(slope * logit(0.65) + icpt), fit) == pytest.approx(0.0, abs=1e-9)
    assert effective_robustness(0.65, sigmoid(slope * logit(0.65) + icpt) + 0.05, fit) == pytest.approx(0.05)
    assert baseline_fit([s for s in group if s.method == "wiseft"], "typeset") is None  # < 3 baseline points
