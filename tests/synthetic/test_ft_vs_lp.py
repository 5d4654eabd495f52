"""T07 (FT fits ID but not OOD), T08 (FT lower bound, Thm 3.1 sub. = Thm 3.2 arXiv, and certificate G),
T10 (LP vs FT as eps varies, Thm 3.2 sub. = Thm 3.3 arXiv, and its converse) of docs/theory.md §3."""

from __future__ import annotations

import numpy as np
import pytest

import lpft.synthetic as S

SEEDS = [0, 1, 2, 3]


def _bound(F) -> float:
    P = F.P
    phi = S.head_alignment_error(F.v0, F.v_star0)
    return S.ft_ood_lower_bound(F.c_perp, P.k, phi, np.linalg.norm(P.w_star), F.eps)


@pytest.mark.parametrize("seed", SEEDS)
def test_T07_ft_fits_id_not_ood(seed, make_F, report):
    F = make_F(seed, theta=0.0, sigma=1.0, min_phi=0.3)
    P = F.P
    tr = S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, times=np.linspace(0, 100, 51))
    v, B = tr.final
    w = B.T @ v
    L_train = S.train_loss(P.X, P.Y, v, B)
    L_id = S.id_loss(w, P.w_star, P.Q_S)
    L_ood = S.ood_loss(w, P.w_star)
    assert L_train <= 1e-12 and L_id <= 1e-12
    floor = max(1e-3, max(_bound(F), 0.0) ** 2)
    assert L_ood >= floor
    dv = np.linalg.norm(v - P.v_star)
    assert dv > 0.05
    # per t: L_ood(t) >= ||P_perp (w - w*)||^2 >= c_perp^2 ||v(t) - v*||^2
    L_t = S.ood_loss(tr.w, P.w_star)
    slack = np.min(L_t - F.c_perp**2 * np.sum((tr.v - P.v_star) ** 2, axis=1))
    assert slack >= -1e-12
    report("T07", "train loss and L_id at T=100", max(L_train, L_id), 1e-12)
    report("T07", "L_ood(FT_inf) / max(1e-3, bound^2) (must be >= 1)", L_ood / floor, 1.0, ">=")
    report("T07", "||v_ft - v*|| (must be > 0.05)", dv, 0.05, ">")
    report("T07", "min_t L_ood(t) - c_perp^2 |v(t)-v*|^2", slack, -1e-12, ">=")


@pytest.mark.parametrize("theta", [0.0, 0.01])
def test_T08_ft_lower_bound_and_certificate(theta, make_F, report):
    ratios = []
    worst_slack = np.inf
    worst_cert = -np.inf
    for seed in SEEDS:
        for sigma in (0.5, 1.0, 2.0):
            F = make_F(seed, theta=theta, sigma=sigma, min_phi=0.3)
            P = F.P
            tr = S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, times=np.linspace(0, 100, 201))
            err = np.sqrt(S.ood_loss(tr.w, P.w_star))  # (201,)
            bound = _bound(F)
            assert bound > 0  # non-vacuous for these fixtures
            slack = err.min() - bound
            assert slack >= -1e-9
            worst_slack = min(worst_slack, slack)
            ratios.append(bound / err.min())
            if theta == 0.0:
                phi = S.head_alignment_error(F.v0, F.v_star0)
                G = S.certificate_G(err, np.linalg.norm(P.v_star), F.c_perp)
                viol = np.max(phi**2 - G)
                assert viol <= 1e-9
                worst_cert = max(worst_cert, viol)
                # the certificate's inverse is a valid lower bound too
                assert err.min() >= S.certificate_error_lower_bound(phi, np.linalg.norm(P.v_star), F.c_perp) - 1e-9
    report("T08", f"min_t sqrt(L_I) - bound (theta={theta})", worst_slack, -1e-9, ">=")
    if theta == 0.0:
        report("T08", "max_t phi^2 - G(e(t))", worst_cert, 1e-9)
    # reported, not asserted ([N] 0.002-0.29): the bound is loose
    report("T08", f"bound/actual min ratio (theta={theta}) [info]", min(ratios), 0.0, ">=")
    report("T08", f"bound/actual max ratio (theta={theta}) [info]", max(ratios), 1.0, "<=")


@pytest.fixture(scope="module")
def rho_runs(make_F):
    """rho(theta) = L_I(LP) / min_{t>0} L_I(FT(t)) for theta in {0.01, 0.1}, sigma = 1, seeds 0-3."""
    out = {}
    times = np.linspace(0, 100, 201)[1:]
    for seed in SEEDS:
        for theta in (0.01, 0.1):
            F = make_F(seed, theta=theta, sigma=1.0, min_phi=0.3)
            P = F.P
            w_lp = P.B0.T @ S.linear_probe(P.X, P.Y, P.B0)
            tr = S.fine_tune_trajectory(P.X, P.Y, F.v0, P.B0, times=times)
            out[seed, theta] = S.ood_loss(w_lp, P.w_star) / S.ood_loss(tr.w, P.w_star).min()
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_T10_lp_beats_ft_ood_as_eps_shrinks(seed, rho_runs, report):
    r1, r2 = rho_runs[seed, 0.01], rho_runs[seed, 0.1]
    assert r1 <= 5e-3 and r2 <= 0.5
    q = r1 / r2
    assert 0.004 <= q <= 0.02  # rho = O(eps^2)
    report("T10", "rho(0.01)", r1, 5e-3)
    report("T10", "rho(0.1)", r2, 0.5)
    report("T10", "rho(0.01)/rho(0.1) low", q, 0.004, ">=")
    report("T10", "rho(0.01)/rho(0.1) high", q, 0.02, "<=")


def test_T10_converse_ft_beats_lp_with_poor_features(make_F, report):
    L_ft, L_lp = [], []
    for seed in SEEDS:
        F = make_F(seed, theta=0.9, sigma=0.1, min_phi=0.3)
        P = F.P
        v, B = S.fine_tune(P.X, P.Y, F.v0, P.B0, T=100.0)
        assert S.train_loss(P.X, P.Y, v, B) <= 1e-10
        L_ft.append(S.ood_loss(B.T @ v, P.w_star))
        L_lp.append(S.ood_loss(P.B0.T @ S.linear_probe(P.X, P.Y, P.B0), P.w_star))
    assert np.mean(L_ft) < np.mean(L_lp)
    report("T10", "converse: mean L_I(FT)/mean L_I(LP) at theta=0.9", np.mean(L_ft) / np.mean(L_lp), 1.0, "<")
