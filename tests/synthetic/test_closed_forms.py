"""T05 (perfect features), T06 (LP error is O(eps)), T09 (exact k=1 FT limit) of docs/theory.md §3."""

from __future__ import annotations

import numpy as np
import pytest

import lpft.synthetic as S

SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_T05_perfect_features(seed, rotate, make_F, report):
    F = make_F(seed, theta=0.0, sigma=1.0)
    P = F.P
    if rotate:  # B0 = U B* for a random U in O(k): the true head in B0's frame is U v*
        U, _ = np.linalg.qr(np.random.default_rng(500 + seed).standard_normal((P.k, P.k)))
    else:
        U = np.eye(P.k)
    B0 = U @ P.B_star
    eps, U_hat = S.feature_distance(B0, P.B_star)
    assert eps <= 1e-12 and np.allclose(U_hat, U, atol=1e-12)
    v_lp = S.linear_probe(P.X, P.Y, B0)
    dev_v = np.max(np.abs(v_lp - U @ P.v_star))
    assert dev_v <= 1e-10
    w_lp = B0.T @ v_lp
    losses = [S.id_loss(w_lp, P.w_star, P.Q_S), S.ood_loss(w_lp, P.w_star), S.ood_loss(w_lp, P.w_star, P.P_perp)]
    assert max(losses) <= 1e-20
    # LP-FT starts at a fixed point of FT (Prop. 3.2 sub., second line)
    gv, gB = S.gradients(P.X, P.Y, v_lp, B0)
    gnorm = np.sqrt(gv @ gv + np.sum(gB**2))
    assert gnorm <= 1e-12
    v, B = S.fine_tune(P.X, P.Y, v_lp, B0, T=100.0)
    dB = np.linalg.norm(B - B0)
    dv = np.linalg.norm(v - U @ P.v_star)
    L_ood = S.ood_loss(B.T @ v, P.w_star)
    assert dB <= 1e-9 and dv <= 1e-9 and L_ood <= 1e-18
    report("T05", "|v_lp - U v*|_max", dev_v, 1e-10)
    report("T05", "max(L_id, L_I, L_Pperp) of LP", max(losses), 1e-20)
    report("T05", "|grad L_hat| at (v_lp, B0)", gnorm, 1e-12)
    report("T05", "LP-FT T=100: max(|B-B0|_F, |v-Uv*|)", max(dB, dv), 1e-9)
    report("T05", "LP-FT T=100: L_ood", L_ood, 1e-18)


THETAS6 = np.array([1e-3, 1e-2, 1e-1])


@pytest.mark.parametrize("v_star_norm", [1.0, 2.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_T06_lp_error_is_order_eps(seed, v_star_norm, make_F, report):
    errs, epss = [], []
    for theta in THETAS6:
        F = make_F(seed, theta=theta, v_star_norm=v_star_norm)
        P = F.P
        w_lp = P.B0.T @ S.linear_probe(P.X, P.Y, P.B0)
        err = np.sqrt(S.ood_loss(w_lp, P.w_star))
        bound = S.lp_ood_upper_bound(theta, v_star_norm, F.c_S)
        assert err <= bound  # [D] bound of docs/theory.md §2.4
        report("T06", "sqrt(L_I(LP)) / [D] bound", err / bound, 1.0)
        L_id = S.id_loss(w_lp, P.w_star, P.Q_S)
        assert L_id > 0
        report("T06", "L_id(LP) for theta>0 (must be > 0)", L_id, 0.0, ">")
        errs.append(err)
        epss.append(F.eps)
    slope = np.polyfit(np.log(epss), np.log(errs), 1)[0]
    assert 0.9 <= slope <= 1.1
    report("T06", "log-log slope sqrt(L_I(LP)) vs eps (low)", slope, 0.9, ">=")
    report("T06", "log-log slope sqrt(L_I(LP)) vs eps (high)", slope, 1.1, "<=")


def test_T06_monte_carlo_checks_quadratic_form(make_F, report):
    F = make_F(0, theta=0.1)
    P = F.P
    w_lp = P.B0.T @ S.linear_probe(P.X, P.Y, P.B0)
    Sigma = S.ood_covariance(P.Q_S, P.Q_perp, 0.5, 1.5)
    closed = S.quadratic_loss(w_lp, P.w_star, Sigma)
    rng = np.random.default_rng(12345)
    n = 200_000
    x = np.sqrt(0.5) * rng.standard_normal((n, P.m)) @ P.Q_S.T + np.sqrt(1.5) * rng.standard_normal((n, P.d - P.m)) @ P.Q_perp.T
    sq = (x @ (w_lp - P.w_star)) ** 2
    se = sq.std(ddof=1) / np.sqrt(n)
    z = abs(sq.mean() - closed) / se
    assert z <= 5
    report("T06", "Monte-Carlo |mean - closed form| in standard errors", z, 5.0)


K1_SEEDS = list(range(8))


@pytest.mark.parametrize("theta", [0.0, 0.1])
def test_T09_exact_k1_ft_limit(theta, report):
    worst_v = worst_w = worst_L = 0.0
    for seed in K1_SEEDS:
        P = S.make_problem(np.random.default_rng(seed), d=12, k=1, m=5, n=10, theta=theta, v_star_norm=1.5)
        v_star = float(P.v_star[0])
        b0, b_star = P.B0[0], P.B_star[0]
        assert np.linalg.norm(P.Q_perp.T @ b0) >= 0.1  # c_perp-like non-degeneracy for k = 1
        for v0 in (1.2, -2.0, 3.0):
            v_inf, b_inf, w_inf = S.ft_limit_k1(v0, b0, P.w_star, P.Q_S)
            v, B = S.fine_tune(P.X, P.Y, np.array([v0]), P.B0, T=60.0, rtol=1e-11, atol=1e-13)
            assert S.train_loss(P.X, P.Y, v, B) <= 1e-16  # converged before reading the limit
            worst_v = max(worst_v, abs(v[0] - v_inf))
            worst_w = max(worst_w, np.linalg.norm(B.T @ v - w_inf))
            assert np.allclose(B[0], b_inf, atol=1e-8)
            if theta == 0.0:
                Lp = np.sum((P.Q_perp.T @ b_star) ** 2)
                worst_L = max(worst_L, abs(S.ood_loss(B.T @ v, P.w_star) - (v_inf - v_star) ** 2 * Lp))
    assert worst_v <= 1e-8 and worst_w <= 1e-8
    report("T09", f"|v_sim - v_inf| (theta={theta})", worst_v, 1e-8)
    report("T09", f"|w_sim - w_inf| (theta={theta})", worst_w, 1e-8)
    if theta == 0.0:
        assert worst_L <= 1e-10
        report("T09", "L_I = (v_inf - v*)^2 |P_perp b*|^2", worst_L, 1e-10)


def test_T09_phi_zero_is_not_sufficient(report):
    worst = 0.0
    for seed in K1_SEEDS:
        P = S.make_problem(np.random.default_rng(seed), d=12, k=1, m=5, n=10, theta=0.0, v_star_norm=1.5)
        v_star = float(P.v_star[0])
        Lp = np.sum((P.Q_perp.T @ P.B_star[0]) ** 2)
        for v0, expected in ((-v_star, 4 * v_star**2 * Lp), (v_star, 0.0)):
            assert S.head_alignment_error(np.array([v0]), P.v_star) <= 1e-12  # phi = 0 in both cases
            v_inf, _, w_inf = S.ft_limit_k1(v0, P.B0[0], P.w_star, P.Q_S)
            v, B = S.fine_tune(P.X, P.Y, np.array([v0]), P.B0, T=60.0, rtol=1e-11, atol=1e-13)
            for L in (S.ood_loss(w_inf, P.w_star), S.ood_loss(B.T @ v, P.w_star)):
                worst = max(worst, abs(L - expected))
        assert 4 * v_star**2 * Lp > 0.1  # v0 = -v*: a large OOD error although phi = 0
    assert worst <= 1e-10
    report("T09", "v0=-v*: L_I = 4v*^2|P_perp b*|^2; v0=v*: L_I = 0", worst, 1e-10)
