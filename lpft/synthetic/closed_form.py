"""Closed forms of Kumar et al. (2022) for two-layer linear networks.

Numbering: "sub." = the OpenReview submission (Def 3.1, Thm 3.1 = FT lower bound, Thm 3.2 = LP vs FT,
Prop 3.1 = ID error, Prop 3.2 = LP-FT); "arXiv" = 2202.10054 / ICLR 2022, where the FT bound is Thm 3.2 and
LP vs FT is Thm 3.3. Results tagged [D] are derived in docs/theory.md §2 (Results) and checked by
tests/synthetic (docs/theory.md §3).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm
from scipy.optimize import brentq

from ._checks import as_array, check_count, check_data, check_features, check_head, check_nonneg, check_positive
from .model import _grads

__all__ = [
    "polar_factor",
    "feature_distance",
    "principal_cosines",
    "head_alignment_error",
    "ft_ood_lower_bound",
    "certificate_G",
    "certificate_error_lower_bound",
    "lp_limit",
    "lp_limit_normal_equations",
    "lp_trajectory",
    "lp_gd_iterate",
    "lp_ood_upper_bound",
    "lp_id_loss",
    "ft_limit_k1",
    "gd_drift_increments",
]


def polar_factor(M) -> np.ndarray:
    """Orthogonal polar factor ``U V^T`` of ``M = U S V^T`` (the nearest orthogonal matrix to M).

    Used for the frame U of ``eps = min_U ||B0 - U B*||_2`` (Sec. 3 of both versions; docs/theory.md §1,
    Setting and notation).
    """
    M = as_array("M", M, 2, "square matrix")
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be square, got shape {M.shape}")
    U, _, Vt = np.linalg.svd(M)
    return U @ Vt


def feature_distance(B0, B_star) -> tuple[float, np.ndarray]:
    """``eps = min_{U in O(k)} ||B0 - U B_star||_2`` and the minimiser U (Sec. 3 of both versions).

    For orthonormal-row B0 and B_star the minimiser is the orthogonal polar factor of ``B0 B_star^T``
    (orthogonal Procrustes). The unsquared spectral-norm version is used (the submission states it once squared).

    Returns:
        ``(eps, U)``; ``U v_star`` is the true head expressed in B0's frame, ``v_star^(0)``.
    """
    B0 = check_features(B0)
    B_star = check_features(B_star, B0.shape[1], "B_star")
    if B_star.shape != B0.shape:
        raise ValueError(f"B_star must have the shape of B0 {B0.shape}, got {B_star.shape}")
    U = polar_factor(B0 @ B_star.T)
    return float(np.linalg.norm(B0 - U @ B_star, 2)), U


def _row_basis(B):
    # Orthonormal basis (d, k) of rowspace(B).
    Q, _ = np.linalg.qr(B.T)
    return Q


def principal_cosines(B0, Q_S, Q_perp) -> tuple[float, float]:
    """``(c_S, c_perp)``: cosines of the largest principal angles of rowspace(B0) with S and S^perp.

    Def. 3.1 (sub.; "cos theta_max" in arXiv): ``cos theta_k(R, T) = sigma_k(E^T F)`` for orthonormal bases
    E, F. Here ``c_S = sigma_min(B0 Q_S)`` and ``c_perp = sigma_min(B0 Q_perp)`` after orthonormalising B0's
    rows. ``c_perp > 0`` makes the FT bound non-vacuous; ``c_S > 0`` makes LP identifiable.
    """
    B0 = check_features(B0)
    E = _row_basis(B0)
    Q_S = as_array("Q_S", Q_S, 2, "d x m basis of S")
    Q_perp = as_array("Q_perp", Q_perp, 2, "d x (d-m) basis of S^perp")
    c_S = np.linalg.svd(E.T @ Q_S, compute_uv=False).min()
    c_perp = np.linalg.svd(E.T @ Q_perp, compute_uv=False).min()
    return float(c_S), float(c_perp)


def head_alignment_error(v0, v_star0) -> float:
    """``phi = sqrt(|(v0^T v*)^2 - (v*^T v*)^2|)``, the initial head alignment error of Thm 3.1 (sub.) =
    Thm 3.2 (arXiv). Use the true head in B0's frame, ``v_star0 = U v_star`` (see :func:`feature_distance`);
    the absolute value is needed (the submission omits it and phi could be imaginary)."""
    v_star0 = as_array("v_star0", v_star0, 1, "k")
    v0 = check_head(v0, v_star0.shape[0])
    return float(np.sqrt(abs(float(v0 @ v_star0) ** 2 - float(v_star0 @ v_star0) ** 2)))


def ft_ood_lower_bound(c_perp: float, k: int, phi: float, w_star_norm: float, eps: float) -> float:
    """Lower bound on ``sqrt(L_ood)`` of FT at EVERY time t (Thm 3.1 sub. = Thm 3.2 arXiv):

        sqrt(L_ood(v_ft(t), B_ft(t))) >= (c_perp / sqrt(k)) * min(phi, phi^2 / ||w*||) / (1 + ||w*||)^2 - eps,

    with the worst-case OOD loss ``L_ood = ||w - w*||^2`` (Sigma = I). For an OOD covariance Sigma, multiply
    the right side by ``sqrt(sigma_min(Sigma))`` (the published form; implied by the Sigma = I one).
    """
    c_perp = check_nonneg("c_perp", c_perp)
    k = check_count("k", int(k) if isinstance(k, (int, np.integer)) else k, 1)
    phi = check_nonneg("phi", phi)
    a = check_positive("w_star_norm", w_star_norm)
    eps = check_nonneg("eps", eps)
    return float(c_perp / np.sqrt(k) * min(phi, phi**2 / a) / (1.0 + a) ** 2 - eps)


def certificate_G(e, v_star_norm: float, c_perp: float):
    """Certificate ``G(e)`` of docs/theory.md §2.3 [D] (eps = 0, Sigma = I): ``phi^2 <= G(||w(t) - w*||)``.

    With ``a = ||v*||``, ``delta = e / c_perp``, ``beta = sqrt(1 + (a + delta)^2)``:
    ``G(e) = 2 a^3 delta + a^2 delta^2 + 2 a e + e^2 + 2 (a + e) beta delta + beta^2 delta^2``.
    G is increasing with G(0) = 0, so ``e >= G^{-1}(phi^2)`` at every t (a sharper-shaped companion of
    Thm 3.1 sub. / Thm 3.2 arXiv). ``e`` may be an array.
    """
    e = np.asarray(e, dtype=np.float64)
    a = check_nonneg("v_star_norm", v_star_norm)
    c = check_positive("c_perp", c_perp)
    delta = e / c
    beta = np.sqrt(1.0 + (a + delta) ** 2)
    G = 2 * a**3 * delta + a**2 * delta**2 + 2 * a * e + e**2 + 2 * (a + e) * beta * delta + beta**2 * delta**2
    return float(G) if G.ndim == 0 else G


def certificate_error_lower_bound(phi: float, v_star_norm: float, c_perp: float) -> float:
    """``G^{-1}(phi^2)``: a lower bound on ``||w_ft(t) - w*||`` for all t at eps = 0 (docs/theory.md §2.3 [D])."""
    phi = check_nonneg("phi", phi)
    if phi == 0:
        return 0.0
    target = phi**2
    hi = 1.0
    while certificate_G(hi, v_star_norm, c_perp) < target:
        hi *= 2.0
    return float(brentq(lambda e: certificate_G(e, v_star_norm, c_perp) - target, 0.0, hi, xtol=1e-15, rtol=1e-14))


def lp_limit(X, Y, B0, v0=None) -> np.ndarray:
    """Limit of LP gradient flow from ``v0`` (docs/theory.md §2.4 [D]): ``Phi^+ Y + (I - Phi^+ Phi) v0``,
    ``Phi = X B0^T``. Equals :func:`lpft.synthetic.linear_probe` for ``v0 = 0`` and for every v0 when
    ``c_S > 0`` (rank Phi = k). LP is convex gradient flow (Sec. 3 of both versions); with perfect features
    the limit has zero OOD error (Prop. A.2, appendix)."""
    X, Y = check_data(X, Y)
    B0 = check_features(B0, X.shape[1])
    k = B0.shape[0]
    v0 = np.zeros(k) if v0 is None else check_head(v0, k)
    Pp = np.linalg.pinv(X @ B0.T)
    return Pp @ Y + (np.eye(k) - Pp @ (X @ B0.T)) @ v0


def lp_limit_normal_equations(X, Y, B0) -> np.ndarray:
    """``v_lp = (B0 Sigma_hat B0^T)^{-1} B0 X^T Y / n`` (docs/theory.md §2.4 [D]; needs c_S > 0). With
    ``Y = X w*`` this is ``(B0 Sigma_hat B0^T)^{-1} B0 Sigma_hat w*``."""
    X, Y = check_data(X, Y)
    B0 = check_features(B0, X.shape[1])
    n = X.shape[0]
    Phi = X @ B0.T
    return np.linalg.solve(Phi.T @ Phi / n, Phi.T @ Y / n)


def _lp_H(X, B0):
    Phi = X @ B0.T
    return 2.0 / X.shape[0] * Phi.T @ Phi


def lp_trajectory(X, Y, B0, v0, t) -> np.ndarray:
    """LP gradient flow in closed form (docs/theory.md §2.4 [D]): ``v(t) = v_inf + exp(-t H)(v0 - v_inf)``,
    ``H = (2/n) Phi^T Phi``. ``t`` scalar -> (k,), array (K,) -> (K, k)."""
    X, Y = check_data(X, Y)
    B0 = check_features(B0, X.shape[1])
    v0 = check_head(v0, B0.shape[0])
    v_inf = lp_limit(X, Y, B0, v0)
    H = _lp_H(X, B0)
    ts = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if np.any(ts < 0) or not np.all(np.isfinite(ts)):
        raise ValueError("t must be finite and >= 0")
    out = np.array([v_inf + expm(-ti * H) @ (v0 - v_inf) for ti in ts])
    return out[0] if np.ndim(t) == 0 else out


def lp_gd_iterate(X, Y, B0, v0, lr: float, K: int) -> np.ndarray:
    """LP gradient descent in closed form (docs/theory.md §2.4 [D]): ``v_K = v_inf + (I - lr H)^K (v0 - v_inf)``."""
    X, Y = check_data(X, Y)
    B0 = check_features(B0, X.shape[1])
    v0 = check_head(v0, B0.shape[0])
    lr = check_positive("lr", lr)
    K = check_count("K", K, 0)
    v_inf = lp_limit(X, Y, B0, v0)
    M = np.eye(B0.shape[0]) - lr * _lp_H(X, B0)
    return v_inf + np.linalg.matrix_power(M, K) @ (v0 - v_inf)


def lp_ood_upper_bound(theta: float, v_star_norm: float, c_S: float, *, kappa: float = 1.0,
                       lam_max: float = 1.0) -> float:
    """Upper bound on ``sqrt(L_Sigma(w_lp))`` for ``B0 = cos(theta) B* + sin(theta) N`` (docs/theory.md §2.4 [D]):

        sqrt(lambda_max(Sigma)) * tan(theta) * ||v*|| * (1 + sqrt(kappa) / c_S),

    kappa = condition number of Sigma_hat on S (1 for the whitened design). O(eps), which with the FT bound
    gives LP vs FT (Thm 3.2 sub. = Thm 3.3 arXiv).
    """
    c_S = check_positive("c_S", c_S)
    return float(np.sqrt(check_nonneg("lam_max", lam_max)) * abs(np.tan(theta)) * check_nonneg("v_star_norm", v_star_norm)
                 * (1.0 + np.sqrt(check_positive("kappa", kappa)) / c_S))


def lp_id_loss(X, Y, B0, Q_S, w_star) -> float:
    """``L_id(LP) = ||P_S (B0^T v_lp - w*)||^2`` (Prop. 3.1 sub.: positive iff P_S w* is not in P_S rowspace(B0))."""
    v = lp_limit(X, Y, B0)
    e = (check_features(B0).T @ v - np.asarray(w_star, dtype=np.float64)) @ np.asarray(Q_S, dtype=np.float64)
    return float(e @ e)


def ft_limit_k1(v0: float, b0, w_star, Q_S, *, sign: float | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact limit of FT gradient flow for k = 1 (docs/theory.md §2.7 [D]; the computation behind Fig. 2).

    With ``B = b^T`` and scalar v: ``P_perp b`` never moves (Sec. 2.1), ``c' = v^2 - ||P_S b||^2`` is conserved
    (Sec. 2.2) and the limit interpolates (``v P_S b = P_S w*``), so

        v_inf^2 = (c' + sqrt(c'^2 + 4 ||P_S w*||^2)) / 2,   b_inf = P_S w* / v_inf + P_perp b0,
        w_inf = P_S w* + v_inf P_perp b0.

    Args:
        v0: initial scalar head. b0: (d,) initial feature vector. w_star: (d,). Q_S: (d, m) basis of S.
        sign: sign of v_inf. Determined (= sign(v0)) when c' > 0, since v cannot cross 0; when c' <= 0 it must
            be passed explicitly.

    Returns:
        ``(v_inf, b_inf, w_inf)``.
    """
    b0 = as_array("b0", b0, 1, "d")
    d = b0.shape[0]
    w_star = as_array("w_star", w_star, 1, "d")
    if w_star.shape != (d,):
        raise ValueError(f"w_star must have length {d}, got {w_star.shape}")
    Q_S = as_array("Q_S", Q_S, 2, "d x m")
    v0 = float(v0)
    PSb0 = Q_S @ (Q_S.T @ b0)
    PSw = Q_S @ (Q_S.T @ w_star)
    c = v0**2 - float(PSb0 @ PSb0)
    if sign is None:
        if c <= 0 or v0 == 0:
            raise ValueError(f"sign of v_inf is not determined when c' = v0^2 - ||P_S b0||^2 <= 0 (c' = {c:.3g}); "
                             "pass sign=+1 or -1")
        sign = np.sign(v0)
    elif sign not in (1, -1, 1.0, -1.0):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    v2 = (c + np.sqrt(c**2 + 4 * float(PSw @ PSw))) / 2
    v_inf = float(sign) * np.sqrt(v2)
    Pperp_b0 = b0 - PSb0
    return v_inf, PSw / v_inf + Pperp_b0, PSw + v_inf * Pperp_b0


def gd_drift_increments(X, Y, vs, Bs, lr: float) -> np.ndarray:
    """Exact per-step change of ``D = v v^T - B B^T`` under gradient descent (docs/theory.md §2.2 [D]):

        D_{t+1} - D_t = lr^2 (g_v g_v^T - g_B g_B^T),

    evaluated at consecutive iterates ``vs`` (K+1, k), ``Bs`` (K+1, k, d). Returns the cumulative sums (K+1, k, k)
    (first entry 0), to compare with ``D_K - D_0``.
    """
    X, Y = check_data(X, Y)
    lr = check_positive("lr", lr)
    vs = np.asarray(vs, dtype=np.float64)
    Bs = np.asarray(Bs, dtype=np.float64)
    out = np.zeros((len(vs), vs.shape[1], vs.shape[1]))
    acc = np.zeros((vs.shape[1], vs.shape[1]))
    for i in range(len(vs) - 1):
        gv, gB, _ = _grads(X, Y, vs[i], Bs[i])
        acc = acc + lr**2 * (np.outer(gv, gv) - gB @ gB.T)
        out[i + 1] = acc
    return out
