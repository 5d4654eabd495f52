"""LP, FT and LP-FT as gradient flow (exact ODE solve) or gradient descent (Kumar et al. 2022, Sec. 3).

* FT: ``dv/dt = -grad_v L_hat``, ``dB/dt = -grad_B L_hat`` from ``(v0, B0)``.
* LP: the same with ``B`` frozen at ``B0``; its limit from ``v = 0`` is the min-norm least-squares head.
* LP-FT: FT started from ``(v_lp, B0)`` (Prop. 3.2 of the submission).

Gradient flow is integrated with scipy's DOP853 at tight tolerances (default rtol 1e-10, atol 1e-12): every
"exact" statement of the theory is about gradient flow, and only docs/theory.md §2.1 (features move only
inside the span of the training inputs) holds exactly for discrete gradient descent too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from ._checks import (
    as_array,
    check_count,
    check_data,
    check_features,
    check_head,
    check_nonneg,
    check_positive,
)
from .model import _grads, effective_predictor, max_stable_lr

__all__ = [
    "Trajectory",
    "GradientDescentDivergedError",
    "simulate",
    "linear_probe",
    "fine_tune",
    "lp_ft",
    "fine_tune_trajectory",
    "linear_probe_trajectory",
    "lp_ft_trajectory",
]

RTOL = 1e-10
ATOL = 1e-12


class GradientDescentDivergedError(ValueError):
    """Raised when gradient descent blows up; the message gives the largest stable step estimate."""


@dataclass(frozen=True)
class Trajectory:
    """Recorded states of a run.

    Attributes:
        t: (K,) times (for gradient descent, ``step * lr``).
        v: (K, k) heads.
        B: (K, k, d) feature extractors.
        steps: (K,) step indices for gradient descent, ``None`` for gradient flow.
    """

    t: np.ndarray
    v: np.ndarray
    B: np.ndarray
    steps: np.ndarray | None = None

    @property
    def w(self) -> np.ndarray:
        """(K, d) effective predictors ``B^T v``."""
        return effective_predictor(self.v, self.B)

    @property
    def final(self) -> tuple[np.ndarray, np.ndarray]:
        """The last recorded state ``(v, B)``."""
        return self.v[-1].copy(), self.B[-1].copy()


def _check_mode(T, lr, steps, times):
    if (T is None) == (lr is None):
        raise ValueError(
            "give exactly one of T (gradient-flow horizon) or lr (gradient-descent step size, with steps); "
            f"got T={T!r}, lr={lr!r}"
        )
    if T is not None:
        T = check_nonneg("T", T)
        if steps is not None:
            raise ValueError("steps is only used with lr (gradient descent); give T alone for gradient flow")
        return "gf", T
    lr = check_positive("lr", lr)
    if steps is None:
        raise ValueError("steps must be given with lr (number of gradient-descent steps)")
    check_count("steps", steps, 0)
    if times is not None:
        raise ValueError("times is only used for gradient flow (T); use record_every with lr/steps")
    return "gd", lr


def simulate(
    X,
    Y,
    v0,
    B0,
    *,
    T=None,
    lr=None,
    steps=None,
    times=None,
    record_every: int | None = None,
    freeze_B: bool = False,
    weight_decay: float = 0.0,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Trajectory:
    """Run FT (or LP with ``freeze_B=True``) on ``L_hat = (1/n)||X B^T v - Y||^2`` and record the path.

    Exactly one of ``T`` (gradient flow up to time T, DOP853) or ``lr`` + ``steps`` (gradient descent, both
    parameters updated from the gradient at the same point) must be given.

    Args:
        X: (n, d) training inputs, one per row. Y: (n,) labels.
        v0: (k,) initial head. B0: (k, d) initial features, 1 <= k < d.
        T: gradient-flow horizon (>= 0).
        lr, steps: gradient-descent step size (> 0) and number of steps (>= 0).
        times: gradient flow only; sorted times in [0, T] to record (default ``[0, T]``).
        record_every: gradient descent only; record every this many steps (default: only start and end).
            The final step is always recorded.
        freeze_B: keep B at B0 (linear probing).
        weight_decay: gradient descent only; adds ``weight_decay * theta`` to the gradient. This BREAKS the
            invariance B(t) P_perp = B0 P_perp (docs/theory.md §2.1); kept only as a documented negative control.
        rtol, atol: ODE solver tolerances.

    Returns:
        A :class:`Trajectory`.

    Raises:
        ValueError: bad shapes, non-finite values, negative T, non-positive lr, both or neither of T and lr.
        GradientDescentDivergedError: gradient descent diverged (message gives the largest stable step).
    """
    X, Y = check_data(X, Y)
    B0 = check_features(B0, X.shape[1])
    v0 = check_head(v0, B0.shape[0])
    mode, val = _check_mode(T, lr, steps, times)
    weight_decay = check_nonneg("weight_decay", weight_decay)
    if mode == "gf":
        if weight_decay:
            raise ValueError("weight_decay is only supported for gradient descent (lr/steps)")
        if record_every is not None:
            raise ValueError("record_every is only used for gradient descent (lr/steps); use times with T")
        return _gradient_flow(X, Y, v0, B0, val, times, freeze_B, check_positive("rtol", rtol), check_positive("atol", atol))
    every = steps if record_every is None else check_count("record_every", record_every, 1)
    return _gradient_descent(X, Y, v0, B0, val, steps, max(every, 1), freeze_B, weight_decay)


def _gradient_flow(X, Y, v0, B0, T, times, freeze_B, rtol, atol) -> Trajectory:
    k, d = B0.shape
    if times is None:
        times = np.array([0.0, T])
    else:
        times = as_array("times", times, 1, "sorted recording times in [0, T]")
        if times.size == 0 or np.any(np.diff(times) < 0) or times[0] < 0 or times[-1] > T:
            raise ValueError(f"times must be non-empty, sorted and inside [0, T={T}]")
    if T == 0:
        return Trajectory(times.copy(), np.repeat(v0[None], times.size, 0), np.repeat(B0[None], times.size, 0))

    if freeze_B:
        def rhs(_t, y):
            gv, _, _ = _grads(X, Y, y, B0)
            return -gv
        y0 = v0.copy()
    else:
        def rhs(_t, y):
            gv, gB, _ = _grads(X, Y, y[:k], y[k:].reshape(k, d))
            return np.concatenate([-gv, -gB.ravel()])
        y0 = np.concatenate([v0, B0.ravel()])

    sol = solve_ivp(rhs, (0.0, T), y0, method="DOP853", t_eval=times, rtol=rtol, atol=atol)
    if sol.status != 0 or not np.all(np.isfinite(sol.y)):
        raise RuntimeError(f"gradient-flow integration failed: {sol.message}")
    ys = sol.y.T  # (K, state)
    v = ys[:, :k].copy()
    B = np.repeat(B0[None], len(times), 0) if freeze_B else ys[:, k:].reshape(-1, k, d).copy()
    return Trajectory(np.asarray(sol.t, dtype=np.float64), v, B)


def _gradient_descent(X, Y, v0, B0, lr, steps, every, freeze_B, wd) -> Trajectory:
    v, B = v0.copy(), B0.copy()
    n = X.shape[0]
    loss0 = float(np.sum((X @ (B.T @ v) - Y) ** 2)) / n
    # A stable run never increases the loss by orders of magnitude; any non-finite value is divergence.
    limit = 1e6 * max(loss0, float(Y @ Y) / n, 1e-300) + 1.0
    rec_t, rec_v, rec_B, rec_s = [0], [v.copy()], [B.copy()], [0]
    for s in range(1, steps + 1):
        gv, gB, r = _grads(X, Y, v, B)
        loss = float(r @ r) / n
        if not np.isfinite(loss) or loss > limit:
            _raise_diverged(X, v0, B0, lr, s - 1)
        if wd:
            gv = gv + wd * v
            gB = gB + wd * B
        v = v - lr * gv
        if not freeze_B:
            B = B - lr * gB
        if s % every == 0 or s == steps:
            rec_t.append(s)
            rec_v.append(v.copy())
            rec_B.append(B.copy())
    r = X @ (B.T @ v) - Y
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(B)) and float(r @ r) / n <= limit):
        _raise_diverged(X, v0, B0, lr, steps)
    st = np.asarray(rec_t)
    return Trajectory(st * lr, np.array(rec_v), np.array(rec_B), st)


def _raise_diverged(X, v0, B0, lr, step):
    bound = max_stable_lr(X, v0, B0)
    raise GradientDescentDivergedError(
        f"gradient descent diverged at step {step} with lr={lr:g}; the largest stable step at the initial point "
        f"is about {bound:.4g} (= 1/(lambda_max(X^T X/n)(||B0||_2^2 + 2||v0||^2))); use a smaller lr"
    )


def linear_probe(X, Y, B0) -> np.ndarray:
    """Linear probing: the min-norm minimiser of ``||X B0^T v - Y||^2`` (k,).

    This is the limit of LP gradient flow from ``v = 0`` (docs/theory.md §2.4, [D]):
    ``v_lp = Phi^+ Y`` with ``Phi = X B0^T``. When ``c_S > 0`` (Def. 3.1) Phi has rank k and this equals the
    normal-equation solution ``(B0 Sigma_hat B0^T)^{-1} B0 Sigma_hat w_star`` independently of the LP head init.
    """
    X, Y = check_data(X, Y)
    B0 = check_features(B0, X.shape[1])
    v, *_ = np.linalg.lstsq(X @ B0.T, Y, rcond=None)
    return v


def fine_tune(X, Y, v0, B0, *, T=None, lr=None, steps=None, rtol: float = RTOL, atol: float = ATOL,
              weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Fine-tuning: gradient flow up to time ``T`` or ``steps`` gradient-descent steps of size ``lr``.

    Minimises ``L(v, B) = (1/n)||X B^T v - Y||^2`` from ``(v0, B0)`` (Kumar et al. 2022, Sec. 3). See
    :func:`simulate` for the arguments and errors.

    Returns:
        ``(v, B)``: the final head (k,) and features (k, d).
    """
    return simulate(X, Y, v0, B0, T=T, lr=lr, steps=steps, rtol=rtol, atol=atol, weight_decay=weight_decay).final


def lp_ft(X, Y, B0, *, T=None, lr=None, steps=None, rtol: float = RTOL, atol: float = ATOL) -> tuple[np.ndarray, np.ndarray]:
    """LP-FT: :func:`fine_tune` started at ``(linear_probe(X, Y, B0), B0)`` (Prop. 3.2 of the submission)."""
    X, Y = check_data(X, Y)
    v_lp = linear_probe(X, Y, B0)
    return fine_tune(X, Y, v_lp, B0, T=T, lr=lr, steps=steps, rtol=rtol, atol=atol)


def fine_tune_trajectory(X, Y, v0, B0, *, times=None, T=None, lr=None, steps=None, record_every=None,
                         rtol: float = RTOL, atol: float = ATOL) -> Trajectory:
    """FT recorded at chosen times (gradient flow: ``times`` in [0, T], default T = times[-1]) or every
    ``record_every`` gradient-descent steps."""
    if T is None and lr is None and times is not None:
        T = float(np.max(times))
    return simulate(X, Y, v0, B0, T=T, lr=lr, steps=steps, times=times, record_every=record_every, rtol=rtol, atol=atol)


def linear_probe_trajectory(X, Y, B0, *, v0=None, times=None, T=None, lr=None, steps=None, record_every=None,
                            rtol: float = RTOL, atol: float = ATOL) -> Trajectory:
    """LP (B frozen at B0) simulated from ``v0`` (default 0) and recorded like :func:`fine_tune_trajectory`."""
    B0 = check_features(B0)
    v0 = np.zeros(B0.shape[0]) if v0 is None else v0
    if T is None and lr is None and times is not None:
        T = float(np.max(times))
    return simulate(X, Y, v0, B0, T=T, lr=lr, steps=steps, times=times, record_every=record_every,
                    freeze_B=True, rtol=rtol, atol=atol)


def lp_ft_trajectory(X, Y, B0, *, times=None, T=None, lr=None, steps=None, record_every=None,
                     rtol: float = RTOL, atol: float = ATOL) -> Trajectory:
    """LP-FT recorded like :func:`fine_tune_trajectory` (FT from ``(linear_probe(X, Y, B0), B0)``)."""
    v_lp = linear_probe(X, Y, B0)
    return fine_tune_trajectory(X, Y, v_lp, B0, times=times, T=T, lr=lr, steps=steps, record_every=record_every,
                                rtol=rtol, atol=atol)
