"""The two-layer linear network of Kumar et al. (2022, Sec. 3), its training loss and evaluation losses.

Notation (as in the paper): inputs ``x`` in R^d, feature extractor ``B`` (k, d), head ``v`` (k,), model
``f(x) = v^T B x`` and effective linear predictor ``w = B^T v`` (d,). Ground truth ``y = w_star^T x`` with
``w_star = B_star^T v_star`` (the submission's "w* = B* v*" is a typo). Training data ``X`` (n, d) has one input
per row and ``Y = X w_star``. The module's training loss is the paper's divided by n:

    L_hat(v, B) = (1/n) ||X B^T v - Y||^2,
    grad_v = (2/n) B X^T r,    grad_B = (2/n) v (X^T r)^T,    r = X B^T v - Y,

(the submission's eq. (3.6) has the transpose/sign wrong). Evaluation losses are closed-form quadratic forms
``L_Sigma(w) = (w - w_star)^T Sigma (w - w_star)`` (= E_{x ~ N(0, Sigma)}[(w^T x - w_star^T x)^2]); the paper's
worst-case OOD loss over the unit ball is ``Sigma = I`` and its "ID subspace loss" is ``Sigma = P_S``.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_array, check_data, check_features, check_head, check_psd

__all__ = [
    "effective_predictor",
    "train_loss",
    "gradients",
    "flow_rhs",
    "quadratic_loss",
    "id_loss",
    "ood_loss",
    "conserved_quantity",
    "max_stable_lr",
]


def effective_predictor(v, B) -> np.ndarray:
    """Return ``w = B^T v``; accepts stacks (..., k) and (..., k, d) and returns (..., d)."""
    v = np.asarray(v, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    return np.einsum("...k,...kd->...d", v, B)


def train_loss(X, Y, v, B) -> float:
    """Training loss ``(1/n)||X B^T v - Y||^2`` (the paper's L_hat divided by n)."""
    X, Y = check_data(X, Y)
    B = check_features(B, X.shape[1], "B")
    v = check_head(v, B.shape[0], "v")
    r = X @ (B.T @ v) - Y
    return float(r @ r) / X.shape[0]


def _grads(X, Y, v, B):
    # No validation: hot path of the simulators. r (n,), g = X^T r (d,).
    n = X.shape[0]
    r = X @ (B.T @ v) - Y
    g = X.T @ r
    return (2.0 / n) * (B @ g), (2.0 / n) * np.outer(v, g), r


def gradients(X, Y, v, B) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of ``L_hat`` (Sec. 3, eq. (3.6) with the transpose corrected).

    Returns:
        ``(grad_v, grad_B)`` with ``grad_v = (2/n) B X^T r`` (k,) and ``grad_B = (2/n) v (X^T r)^T`` (k, d).
    """
    X, Y = check_data(X, Y)
    B = check_features(B, X.shape[1], "B")
    v = check_head(v, B.shape[0], "v")
    gv, gB, _ = _grads(X, Y, v, B)
    return gv, gB


def flow_rhs(X, Y, v, B) -> tuple[np.ndarray, np.ndarray]:
    """Velocity of fine-tuning gradient flow, ``(dv/dt, dB/dt) = -(grad_v, grad_B)``."""
    gv, gB = gradients(X, Y, v, B)
    return -gv, -gB


def quadratic_loss(w, w_star, Sigma=None) -> np.ndarray | float:
    """Closed-form population loss ``L_Sigma(w) = (w - w_star)^T Sigma (w - w_star)``.

    ``Sigma=None`` means the identity, i.e. the paper's worst-case OOD loss
    ``max_{||x|| <= 1} (w_star^T x - w^T x)^2 = ||w - w_star||^2`` (Sec. 3 of both versions).
    ``w`` may be a stack (..., d); the result then has shape (...).
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 1 or not np.all(np.isfinite(w)):
        raise ValueError(f"w must be a finite array of shape (..., d), got shape {w.shape}")
    d = w.shape[-1]
    w_star = as_array("w_star", w_star, 1, f"length-{d} vector")
    if w_star.shape[0] != d:
        raise ValueError(f"w_star must have length d={d} to match w, got shape {w_star.shape}")
    e = w - w_star
    if Sigma is None:
        out = np.einsum("...d,...d->...", e, e)
    else:
        S = check_psd(Sigma, d)
        out = np.einsum("...d,de,...e->...", e, S, e)
    return float(out) if out.ndim == 0 else out


def id_loss(w, w_star, Q_S) -> np.ndarray | float:
    """ID subspace loss ``||P_S (w - w_star)||^2 = L_{P_S}(w)`` with Q_S (d, m) an orthonormal basis of S."""
    w = np.asarray(w, dtype=np.float64)
    Q = as_array("Q_S", Q_S, 2, "d x m orthonormal basis of S")
    e = (w - np.asarray(w_star, dtype=np.float64)) @ Q
    out = np.einsum("...m,...m->...", e, e)
    return float(out) if out.ndim == 0 else out


def ood_loss(w, w_star, Sigma=None) -> np.ndarray | float:
    """OOD loss; alias of :func:`quadratic_loss` (``Sigma=None``: the paper's worst case, Sigma = I)."""
    return quadratic_loss(w, w_star, Sigma)


def conserved_quantity(v, B) -> np.ndarray:
    """``D = v v^T - B B^T`` (k, k), conserved by gradient flow (Sec. 3.2, balancedness of Du et al. 2018).

    Works on stacks: v (..., k), B (..., k, d) -> (..., k, k).
    """
    v = np.asarray(v, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    return v[..., :, None] * v[..., None, :] - B @ np.swapaxes(B, -1, -2)


def max_stable_lr(X, v, B) -> float:
    """Largest gradient-descent step deemed stable at (v, B): ``1 / (lambda_max(Sigma_hat)(||B||_2^2 + 2||v||^2))``.

    ``Sigma_hat = X^T X / n``. This is a Hessian-based estimate (docs/theory.md §5, Numerical practice and
    pitfalls): the Gauss-Newton part of the Hessian of L_hat has top eigenvalue at most
    ``2 lambda_max(Sigma_hat)(||B||_2^2 + ||v||^2)``, and the residual term adds at most the same order once the
    loss is small. It is a guide, not a guarantee.
    """
    X = as_array("X", X, 2, "n inputs x d")
    B = as_array("B", B, 2, "k x d")
    v = as_array("v", v, 1, "k")
    lam = np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    denom = lam * (np.linalg.norm(B, 2) ** 2 + 2.0 * float(v @ v))
    return float(np.inf) if denom <= 0 else float(1.0 / denom)
