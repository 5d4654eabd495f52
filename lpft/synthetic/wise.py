"""WiSE-FT (Wortsman et al. 2022) in two-layer linear networks: weight-space vs output-space ensembles.

``theta_alpha = (1 - alpha) theta0 + alpha theta1`` with ``theta = (v, B)``. The weight-space ensemble (WSE)
predictor is ``w_WSE(alpha) = B_alpha^T v_alpha``; the output-space ensemble (OSE) is
``w_OSE(alpha) = (1 - alpha) w0 + alpha w1``. Identities of docs/theory.md §2.9 [D] (WiSE-FT App. F,
Proposition 1, states (a)):

(a) the linearised model is affine in theta, so WSE = OSE exactly for it;
(b) ``w_WSE(alpha) = w_OSE(alpha) - alpha (1 - alpha) q`` with ``q = Delta B^T Delta v``;
(c) the exact loss identity and bound of :func:`wse_loss_closed_form` / :func:`wse_ose_gap_bound`;
(d) for FT from B0, ``P_perp q = 0``, so WSE and OSE OOD losses coincide for Sigma supported on S^perp.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_array, check_features, check_head, check_psd

__all__ = [
    "wise_ft",
    "wse_predictor",
    "ose_predictor",
    "interpolation_q",
    "linearised_output",
    "wse_loss_closed_form",
    "wse_ose_gap_bound",
    "ose_interior_minimum",
    "wise_curves",
]


def _theta(name, theta):
    try:
        v, B = theta
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (v, B) with v (k,) and B (k, d)") from None
    B = check_features(B, name=f"{name}[1] (B)")
    v = check_head(v, B.shape[0], f"{name}[0] (v)")
    return v, B


def _pair(theta0, theta1):
    v0, B0 = _theta("theta0", theta0)
    v1, B1 = _theta("theta1", theta1)
    if B0.shape != B1.shape:
        raise ValueError(f"theta0 and theta1 must have the same shapes, got B {B0.shape} vs {B1.shape}")
    return v0, B0, v1, B1


def _alphas(alpha):
    a = np.asarray(alpha, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("alpha must be finite")
    return a


def wise_ft(theta0, theta1, alpha) -> tuple[np.ndarray, np.ndarray]:
    """WiSE-FT weight interpolation ``(1 - alpha) theta0 + alpha theta1`` for ``theta = (v, B)``.

    Args:
        theta0: (v0, B0), e.g. the zero-shot / LP model. theta1: (v1, B1), the fine-tuned model.
        alpha: scalar mixing coefficient (0 -> theta0, 1 -> theta1).

    Returns:
        ``(v, B)``.
    """
    v0, B0, v1, B1 = _pair(theta0, theta1)
    a = _alphas(alpha)
    if a.ndim != 0:
        raise ValueError(f"alpha must be a scalar, got shape {a.shape}")
    a = float(a)
    return (1 - a) * v0 + a * v1, (1 - a) * B0 + a * B1


def wse_predictor(theta0, theta1, alpha) -> np.ndarray:
    """``w_WSE(alpha) = B_alpha^T v_alpha``; alpha scalar -> (d,), array (A,) -> (A, d)."""
    v0, B0, v1, B1 = _pair(theta0, theta1)
    a = _alphas(alpha)
    al = np.atleast_1d(a)[:, None]
    v = (1 - al) * v0 + al * v1  # (A, k)
    B = (1 - al)[:, :, None] * B0 + al[:, :, None] * B1  # (A, k, d)
    w = np.einsum("ak,akd->ad", v, B)
    return w[0] if a.ndim == 0 else w


def ose_predictor(theta0, theta1, alpha) -> np.ndarray:
    """``w_OSE(alpha) = (1 - alpha) B0^T v0 + alpha B1^T v1`` (output-space ensemble)."""
    v0, B0, v1, B1 = _pair(theta0, theta1)
    a = _alphas(alpha)
    al = np.atleast_1d(a)[:, None]
    w = (1 - al) * (B0.T @ v0) + al * (B1.T @ v1)
    return w[0] if a.ndim == 0 else w


def interpolation_q(theta0, theta1) -> np.ndarray:
    """``q = Delta B^T Delta v`` (d,), so that ``w_WSE - w_OSE = -alpha (1 - alpha) q`` (docs/theory.md §2.9(b))."""
    v0, B0, v1, B1 = _pair(theta0, theta1)
    return (B1 - B0).T @ (v1 - v0)


def linearised_output(x, theta, theta_ref) -> np.ndarray:
    """First-order Taylor model around ``theta_ref = (v_r, B_r)`` (docs/theory.md §2.9(a)):
    ``f_lin(x; theta) = v_r^T B_r x + (v - v_r)^T B_r x + v_r^T (B - B_r) x``. x (d,) or (p, d)."""
    vr, Br, v, B = _pair(theta_ref, theta)
    x = np.asarray(x, dtype=np.float64)
    return x @ (Br.T @ vr) + x @ (Br.T @ (v - vr)) + x @ ((B - Br).T @ vr)


def wse_loss_closed_form(theta0, theta1, alpha, w_star, Sigma=None) -> np.ndarray:
    """``L_Sigma(w_WSE(alpha))`` through the OSE (docs/theory.md §2.9(c) [D]):

        L_WSE = L_OSE - 2 alpha (1 - alpha) q^T Sigma (w_OSE - w*) + alpha^2 (1 - alpha)^2 q^T Sigma q,

    a quartic in alpha. ``Sigma=None`` is the identity. Returns shape of alpha.
    """
    a = _alphas(alpha)
    wo = np.atleast_2d(ose_predictor(theta0, theta1, np.atleast_1d(a)))
    q = interpolation_q(theta0, theta1)
    d = q.shape[0]
    w_star = as_array("w_star", w_star, 1, f"length-{d}")
    S = np.eye(d) if Sigma is None else check_psd(Sigma, d)
    e = wo - w_star
    al = np.atleast_1d(a)
    c = al * (1 - al)
    L_ose = np.einsum("ad,de,ae->a", e, S, e)
    out = L_ose - 2 * c * (e @ (S @ q)) + c**2 * float(q @ S @ q)
    return out[0] if a.ndim == 0 else out


def wse_ose_gap_bound(theta0, theta1, alpha, w_star, Sigma=None) -> np.ndarray:
    """Bound on ``|L_WSE - L_OSE|`` (docs/theory.md §2.9(c) [D]):
    ``2 alpha(1-alpha) ||q||_Sigma ||w_OSE - w*||_Sigma + alpha^2 (1-alpha)^2 ||q||_Sigma^2``."""
    a = _alphas(alpha)
    al = np.atleast_1d(a)
    wo = np.atleast_2d(ose_predictor(theta0, theta1, al))
    q = interpolation_q(theta0, theta1)
    d = q.shape[0]
    S = np.eye(d) if Sigma is None else check_psd(Sigma, d)
    e = wo - as_array("w_star", w_star, 1, f"length-{d}")
    qn = np.sqrt(max(float(q @ S @ q), 0.0))
    en = np.sqrt(np.maximum(np.einsum("ad,de,ae->a", e, S, e), 0.0))
    c = np.abs(al * (1 - al))
    out = 2 * c * qn * en + c**2 * qn**2
    return out[0] if a.ndim == 0 else out


def ose_interior_minimum(w0, w1, w_star, Sigma=None, *, rtol: float = 1e-9) -> bool:
    """Whether ``alpha -> L_Sigma((1-alpha) w0 + alpha w1)`` has its minimum strictly inside (0, 1)
    (docs/theory.md §2.9(d) [D]): iff ``a^T Sigma b < min(a^T Sigma a, b^T Sigma b)``, a = w0 - w*, b = w1 - w*.

    Ties within round-off (e.g. an endpoint that interpolates, b^T Sigma b = 0 = a^T Sigma b up to 1e-17) count
    as "not interior": the margin must exceed ``rtol * max(a^T Sigma a, b^T Sigma b)``.
    """
    w_star = as_array("w_star", w_star, 1, "d")
    d = w_star.shape[0]
    a = as_array("w0", w0, 1, "d") - w_star
    b = as_array("w1", w1, 1, "d") - w_star
    S = np.eye(d) if Sigma is None else check_psd(Sigma, d)
    ab, aa, bb = float(a @ S @ b), float(a @ S @ a), float(b @ S @ b)
    return min(aa, bb) - ab > rtol * max(aa, bb, 0.0)


def wise_curves(theta0, theta1, w_star, Q_S, Sigma_ood=None, alphas=None) -> dict[str, np.ndarray]:
    """ID and OOD losses along the WiSE-FT path, weight space (WSE) and output space (OSE).

    Args:
        theta0, theta1: endpoints (v, B). w_star: (d,). Q_S: (d, m) basis of S (ID loss = L_{P_S}).
        Sigma_ood: OOD covariance (None: identity, the paper's worst case). alphas: grid (default 21 points).

    Returns:
        dict with ``alpha`` and ``id_wse``, ``id_ose``, ``ood_wse``, ``ood_ose`` (each (A,)).
    """
    alphas = np.linspace(0.0, 1.0, 21) if alphas is None else np.atleast_1d(_alphas(alphas))
    w_star = as_array("w_star", w_star, 1, "d")
    Q_S = as_array("Q_S", Q_S, 2, "d x m")
    d = w_star.shape[0]
    S_ood = np.eye(d) if Sigma_ood is None else check_psd(Sigma_ood, d, "Sigma_ood")
    out = {"alpha": alphas}
    for tag, w in (("wse", wse_predictor(theta0, theta1, alphas)), ("ose", ose_predictor(theta0, theta1, alphas))):
        e = w - w_star
        out[f"id_{tag}"] = np.sum((e @ Q_S) ** 2, axis=1)
        out[f"ood_{tag}"] = np.einsum("ad,de,ae->a", e, S_ood, e)
    return out
