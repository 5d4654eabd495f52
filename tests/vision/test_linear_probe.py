"""The torch linear probe against scikit-learn's LogisticRegression (the test oracle).

The oracle is LP-FT's ``log_reg_sk.py`` procedure: scalar standardisation (one mean/std over all train
entries), lbfgs multinomial L2 logistic regression, warm-started over ``np.logspace(-7, 2, n)``, C chosen by
ID validation accuracy.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sklearn_lm = pytest.importorskip("sklearn.linear_model")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

import lpft.vision  # noqa: E402
from lpft.vision.linear_probe import LinearProbeResult, default_cs, linear_probe  # noqa: E402


def _clusters(seed=0, k=6, d=30, n_tr=400, n_va=300, n_te=1000, spread=1.6, offset=2.0):
    """Gaussian class clusters with anisotropic noise and a non-zero mean (so standardisation matters)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * 0.55
    scales = np.linspace(0.3, spread, d)

    def draw(m):
        y = rng.integers(0, k, m)
        x = means[y] + rng.standard_normal((m, d)) * scales + offset
        return x.astype(np.float32), y

    return draw(n_tr), draw(n_va), draw(n_te)


def _standardise(xt):
    mu, sd = float(xt.mean(dtype=np.float64)), float(xt.std(dtype=np.float64))
    return mu, sd, (lambda x: (np.asarray(x, np.float64) - mu) / sd)


def _sklearn_path(xt, yt, xv, yv, cs, tol=1e-4, max_iter=200):
    _, _, st = _standardise(xt)
    clf = sklearn_lm.LogisticRegression(warm_start=True, max_iter=max_iter, tol=tol)
    path, best = [], (-1.0, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in cs:
            clf.set_params(C=c)
            clf.fit(st(xt), yt)
            acc = clf.score(st(xv), yv)
            path.append(acc)
            if acc > best[0]:
                best = (acc, c, (clf.coef_.copy(), clf.intercept_.copy()))
    return path, best


def _sklearn_fixed_c(xt, yt, c):
    _, _, st = _standardise(xt)
    clf = sklearn_lm.LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
    clf.fit(st(xt), yt)
    return clf, st


def _objective(w_std, b_std, xs, y, c):
    """sklearn's objective C * sum CE + 0.5 ||W||^2, in float64."""
    logits = xs @ w_std.T + b_std
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    return c * float((lse - logits[np.arange(len(y)), y]).sum()) + 0.5 * float((w_std**2).sum())


def _to_std(res: LinearProbeResult):
    """Map the raw-feature head back to standardised coordinates: W = W' sigma, b = b' + mu W' 1."""
    w = res.weight.double().numpy()
    b = res.bias.double().numpy()
    return w * res.std, b + res.mean * w.sum(1)


def _acc(res, x, y):
    return float((res.logits(x).argmax(1).numpy() == y).mean())


# ------------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_heldout_accuracy_matches_sklearn_over_the_lpft_grid(seed):
    (xt, yt), (xv, yv), (xs, ys) = _clusters(seed)
    cs = default_cs(50)
    res = linear_probe(xt, yt, xv, yv, progress=False)  # default grid = LP-FT's 50 values
    assert [c for c, _ in res.path] == pytest.approx(cs)
    _, (sk_val, sk_c, (coef, icpt)) = _sklearn_path(xt, yt, xv, yv, cs)
    _, _, st = _standardise(xt)
    sk_test = float(((st(xs) @ coef.T + icpt).argmax(1) == ys).mean())
    ours_test = _acc(res, xs, ys)
    assert 0.5 < sk_test < 0.97  # a problem where the probe has something to get right
    assert abs(ours_test - sk_test) <= 0.005, (ours_test, sk_test, res.C, sk_c)
    assert abs(res.val_acc - sk_val) <= 0.005


def test_val_path_matches_sklearn_where_the_model_is_not_trivial():
    (xt, yt), (xv, yv), _ = _clusters(2)
    cs = np.logspace(-3, 2, 12)
    res = linear_probe(xt, yt, xv, yv, cs, progress=False)
    sk_path, _ = _sklearn_path(xt, yt, xv, yv, cs)
    ours = np.array([a for _, a in res.path])
    # one or two val points may flip on near-ties; the path as a whole must agree
    assert np.max(np.abs(ours - np.array(sk_path))) <= 2 / len(yv) + 1e-12


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_c_objective_and_weights_match_sklearn(c, dtype):
    (xt, yt), (xv, yv), _ = _clusters(3)
    clf, st = _sklearn_fixed_c(xt, yt, c)
    tol = 1e-10 if dtype == torch.float64 else 1e-7
    res = linear_probe(xt, yt, xv, yv, [c], dtype=dtype, tol=tol, max_iter=5000, progress=False)
    w, b = _to_std(res)
    f_ours = _objective(w, b, st(xt), yt, c)
    f_sk = _objective(clf.coef_, clf.intercept_, st(xt), yt, c)
    rel = 1e-7 if dtype == torch.float64 else 2e-5  # float32 stalls ~6e-6 at C=100
    assert f_ours <= f_sk * (1 + rel) + 1e-9  # never worse than the oracle beyond rounding
    assert f_ours == pytest.approx(f_sk, rel=rel)
    scale = np.abs(clf.coef_).max()
    atol = (1e-5 if dtype == torch.float64 else 5e-3) * max(scale, 1.0)
    np.testing.assert_allclose(w, clf.coef_, atol=atol)
    np.testing.assert_allclose(b - b.mean(), clf.intercept_ - clf.intercept_.mean(), atol=atol * 5)


def test_preconditioning_is_only_a_change_of_variables():
    (xt, yt), (xv, yv), _ = _clusters(4)
    kw = dict(dtype=torch.float64, tol=1e-8, max_iter=3000, progress=False)
    a = linear_probe(xt, yt, xv, yv, [0.05, 5.0], precondition=True, **kw)
    b = linear_probe(xt, yt, xv, yv, [0.05, 5.0], precondition=False, **kw)
    assert a.path == b.path
    torch.testing.assert_close(a.weight, b.weight, atol=1e-4, rtol=1e-4)
    # and it needs fewer iterations on these anisotropic features
    assert sum(a.n_iter) < sum(b.n_iter)


# ------------------------------------------------------------------------------------------- behaviour


def test_unstandardised_head_gives_the_standardised_model_logits_on_raw_features():
    (xt, yt), (xv, yv), (xs, _) = _clusters(5, offset=5.0)
    c = 0.3
    clf, st = _sklearn_fixed_c(xt, yt, c)
    res = linear_probe(xt, yt, xv, yv, [c], dtype=torch.float64, tol=1e-8, max_iter=3000, progress=False)
    assert res.mean == pytest.approx(float(xt.mean(dtype=np.float64)))
    assert res.std == pytest.approx(float(xt.std(dtype=np.float64)))
    raw_logits = res.logits(xs).double().numpy()  # weights applied to RAW features
    std_logits = clf.decision_function(st(xs))  # the oracle applied to standardised features
    # multinomial logits are defined up to a per-row constant; compare centred rows
    centre = lambda z: z - z.mean(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centre(raw_logits), centre(std_logits), atol=2e-3)


def test_c_selected_by_val_accuracy_ties_to_smaller_c():
    (xt, yt), (xv, yv), _ = _clusters(6)
    cs = np.logspace(-4, 2, 10)
    res = linear_probe(xt, yt, xv, yv, cs, progress=False)
    accs = [a for _, a in res.path]
    assert res.val_acc == max(accs)
    assert res.C == pytest.approx(res.path[accs.index(max(accs))][0])  # first (smallest) C with the max
    # the head is the one fitted at the chosen C: refitting that C alone (cold start) agrees closely
    alone = linear_probe(xt, yt, xv, yv, [res.C], progress=False)
    assert _acc(alone, xv, yv) == pytest.approx(res.val_acc, abs=2 / len(yv))
    # on separable data every C below reaches 100% val accuracy: the tie goes to the smallest
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = (np.eye(3)[y] * 10 + 0.1 * rng.standard_normal((90, 3))).astype(np.float32)
    sep = linear_probe(x, y, x, y, [1.0, 10.0, 100.0], progress=False)
    assert [a for _, a in sep.path] == [1.0, 1.0, 1.0]
    assert sep.C == 1.0


def test_cs_given_unsorted_are_walked_in_increasing_order():
    (xt, yt), (xv, yv), _ = _clusters(7)
    res = linear_probe(xt, yt, xv, yv, [10.0, 0.01, 1.0], progress=False)
    assert [c for c, _ in res.path] == [0.01, 1.0, 10.0]
    assert len(res.n_iter) == 3


def test_absent_classes_get_zero_rows():
    (xt, yt), (xv, yv), _ = _clusters(8, k=5)
    # labels 0..4 become 0, 1, 3, 4, 6 out of 8 classes: 2, 5 and 7 never appear
    lut = np.array([0, 1, 3, 4, 6])
    res = linear_probe(xt, lut[yt], xv, lut[yv], [1.0], num_classes=8, progress=False)
    assert res.weight.shape == (8, xt.shape[1]) and res.bias.shape == (8,)
    assert res.weight.dtype == torch.float32 and res.bias.dtype == torch.float32
    for absent in (2, 5, 7):
        assert torch.count_nonzero(res.weight[absent]) == 0 and res.bias[absent] == 0
    compact = linear_probe(xt, yt, xv, yv, [1.0], progress=False)
    torch.testing.assert_close(res.weight[lut], compact.weight)
    torch.testing.assert_close(res.bias[lut], compact.bias)
    assert res.val_acc == compact.val_acc


def test_numpy_and_torch_inputs_agree():
    (xt, yt), (xv, yv), _ = _clusters(9)
    a = linear_probe(xt, yt, xv, yv, [0.1, 1.0], progress=False)
    b = linear_probe(torch.from_numpy(xt).double(), torch.from_numpy(yt), torch.from_numpy(xv),
                     torch.from_numpy(yv).int(), [0.1, 1.0], progress=False)
    assert isinstance(a, LinearProbeResult)
    assert a.path == b.path
    torch.testing.assert_close(a.weight, b.weight)


def test_package_exports_the_function():
    assert callable(lpft.vision.linear_probe)
    assert lpft.vision.linear_probe is linear_probe
    assert "linear_probe" in lpft.vision.__all__ and "LinearProbeResult" in lpft.vision.__all__
    (xt, yt), (xv, yv), _ = _clusters(10, n_tr=60, n_va=30)
    assert isinstance(lpft.vision.linear_probe(xt, yt, xv, yv, [1.0], progress=False), LinearProbeResult)


# ------------------------------------------------------------------------------------------ validation


def _ok():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 4)), np.arange(20) % 3, rng.standard_normal((10, 4)), np.arange(10) % 3


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(train_x=[[1.0, 2.0]]), "torch.Tensor or numpy.ndarray"),
        (lambda a: a.update(train_x=np.zeros(20)), "2-D"),
        (lambda a: a.update(val_x=np.zeros((10, 5))), "val_x has 5 features"),
        (lambda a: a.update(train_y=np.arange(19) % 3), "19 labels"),
        (lambda a: a.update(train_y=(np.arange(20) % 3)[:, None]), "1-D"),
        (lambda a: a.update(train_y=np.arange(20) % 3 + 0.5), "integer class indices"),
        (lambda a: a.update(train_y=np.arange(20) % 3 - 1), "negative"),
        (lambda a: a.update(train_y=np.zeros(20, int), num_classes=3), "at least two classes"),
        (lambda a: a.update(val_y=np.arange(10) % 5, num_classes=3), "label 4 but num_classes is 3"),
        (lambda a: a.update(train_x=np.where(np.eye(20, 4) > 0, np.nan, 1.0)), "NaN or infinite"),
        (lambda a: a.update(val_x=np.full((10, 4), np.inf)), "NaN or infinite"),
        (lambda a: a.update(train_x=np.ones((20, 4))), "constant"),
        (lambda a: a.update(Cs=[1.0, -1.0]), "finite and > 0"),
        (lambda a: a.update(Cs=[]), "Cs is empty"),
        (lambda a: a.update(Cs="abc"), "positive numbers"),
        (lambda a: a.update(num_classes=1), "num_classes must be an int >= 2"),
        (lambda a: a.update(max_iter=0), "max_iter"),
        (lambda a: a.update(tol=0.0), "tol"),
        (lambda a: a.update(dtype=torch.float16), "dtype"),
        (lambda a: a.update(device="gpu0"), "invalid device"),
        (lambda a: a.update(train_x=np.array([["a"] * 4] * 20)), "torch.Tensor or numpy.ndarray|real numbers"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    xt, yt, xv, yv = _ok()
    args = dict(train_x=xt, train_y=yt, val_x=xv, val_y=yv, Cs=[1.0], progress=False)
    change(args)
    with pytest.raises(ValueError, match=match):
        linear_probe(**args)
