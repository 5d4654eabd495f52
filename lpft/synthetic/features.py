"""Feature-change measurements (Kumar et al. 2022, Sec. 3.2.1 and Sec. 4.3) and the NTK split.

docs/theory.md §2.1 (features move only inside S): the FT gradient for B is ``(2/n) v (X^T r)^T``, whose rows
lie in S = rowspace(X), so ``Delta B = B(t) - B0`` satisfies ``Delta B P_perp = 0``: features of OOD directions
never change (Lemma A.3 of the LP-FT paper, restated as Cor. 4.3 by Tomihari & Sato 2024). docs/theory.md §2.8:
the linear analogue of
Tomihari & Sato's Prop. 4.1 splits the output velocity into a pretrain (P) and an FT (F) part.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_array, check_data, check_features, check_head
from .model import _grads

__all__ = [
    "feature_change",
    "feature_change_ratio",
    "feature_velocity",
    "output_velocity",
    "output_velocity_split",
]


def feature_change(B, B0, Q_S, Q_perp) -> tuple[np.ndarray | float, np.ndarray | float]:
    """``(||Delta B Q_S||_F, ||Delta B Q_perp||_F)`` for ``Delta B = B - B0``: change of ID vs OOD features.

    ``B`` may be a stack (K, k, d). The second entry is 0 along any FT gradient flow / descent path (Sec. 2.1).
    """
    B = np.asarray(B, dtype=np.float64)
    B0 = check_features(B0)
    dB = B - B0
    Q_S = as_array("Q_S", Q_S, 2, "d x m")
    Q_perp = as_array("Q_perp", Q_perp, 2, "d x (d-m)")
    a = np.linalg.norm(dB @ Q_S, axis=(-2, -1))
    b = np.linalg.norm(dB @ Q_perp, axis=(-2, -1))
    return (float(a), float(b)) if dB.ndim == 2 else (a, b)


def feature_change_ratio(B, B0, Sigma_ood, Sigma_id) -> float:
    """``E_ood ||Delta B x||^2 / E_id ||Delta B x||^2 = tr(dB Sigma_ood dB^T) / tr(dB Sigma_id dB^T)``.

    For FT iterates and ``Sigma_ood = a_S P_S + a_perp P_perp``, ``Sigma_id = P_S`` it equals a_S exactly
    (docs/theory.md §2.8 [D]): ID features change more than OOD ones iff a_S < 1 (measured on Living-17 in
    Sec. 4.3 of the paper).
    """
    B0 = check_features(B0)
    B = check_features(B, B0.shape[1], "B")
    dB = B - B0
    so = as_array("Sigma_ood", Sigma_ood, 2, "d x d")
    si = as_array("Sigma_id", Sigma_id, 2, "d x d")
    den = float(np.trace(dB @ si @ dB.T))
    if den <= 0:
        raise ValueError("the features did not change on the ID distribution (denominator is 0)")
    return float(np.trace(dB @ so @ dB.T)) / den


def feature_velocity(X, Y, v, B, x) -> np.ndarray:
    """``d(Bx)/dt = -(2/n)(r^T X x) v`` along FT gradient flow (docs/theory.md §2.8 [D]): parallel to the head.

    ``x`` may be (d,) or (p, d); returns (k,) or (p, k).
    """
    X, Y = check_data(X, Y)
    B = check_features(B, X.shape[1], "B")
    v = check_head(v, B.shape[0], "v")
    x = np.asarray(x, dtype=np.float64)
    r = X @ (B.T @ v) - Y
    s = (x @ X.T) @ r  # (p,) or scalar: r^T X x
    return -(2.0 / X.shape[0]) * np.multiply.outer(s, v)


def output_velocity(X, Y, v, B, x) -> np.ndarray:
    """``df(x)/dt = d(v^T B x)/dt`` computed from the flow's right-hand side (chain rule, no finite differences)."""
    X, Y = check_data(X, Y)
    B = check_features(B, X.shape[1], "B")
    v = check_head(v, B.shape[0], "v")
    gv, gB, _ = _grads(X, Y, v, B)
    x = np.asarray(x, dtype=np.float64)
    return -(x @ B.T) @ gv - (x @ gB.T) @ v


def output_velocity_split(X, Y, v, B, x) -> tuple[np.ndarray, np.ndarray]:
    """NTK split of ``df(x)/dt`` (docs/theory.md §2.8 [D]; linear analogue of Tomihari & Sato 2024, Prop. 4.1):

        df(x)/dt = -(2/n) sum_i r_i [<B x, B x_i>  +  ||v||^2 <x, x_i>]
                 =        P-part (head moves)      +  F-part (features move, proportional to ||v||^2).

    Returns:
        ``(P, F)`` with the shape of ``x[..., 0]``.
    """
    X, Y = check_data(X, Y)
    B = check_features(B, X.shape[1], "B")
    v = check_head(v, B.shape[0], "v")
    x = np.asarray(x, dtype=np.float64)
    n = X.shape[0]
    r = X @ (B.T @ v) - Y
    P = -(2.0 / n) * ((x @ B.T) @ (B @ X.T)) @ r
    F = -(2.0 / n) * float(v @ v) * (x @ X.T) @ r
    return P, F
