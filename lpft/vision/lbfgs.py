"""The preconditioned full-batch L-BFGS solver of :func:`lpft.vision.linear_probe.linear_probe` (one C).

See that module's docstring for the objective, the change of variables and the stopping rule.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Problem", "lbfgs"]


class Problem:
    """Objective of one C; ``V = [V_w, c]`` are eigenbasis coordinates of ``(W, b~)``.

    ``Z = [X_c Q, 1]`` holds the column-centred standardised features rotated into the eigenbasis of their
    second-moment matrix, plus a column of ones, so ``W = V_w Q^T``, logits ``= Z V^T`` and
    ``||W||^2 = ||V_w||^2`` (Q is orthogonal). Centring decouples the unpenalised intercept from ``W``.
    """

    def __init__(self, Z, y, Q, col_mean, C):
        self.Z, self.y, self.Q, self.col_mean = Z, y, Q, col_mean
        self.minus_one = torch.full((Z.shape[0], 1), -1.0, dtype=Z.dtype, device=Z.device)
        self.n = Z.shape[0]
        self.reg = 1.0 / (C * self.n)  # objective scaled by 1/(C N): mean CE + reg/2 ||W||^2 (as sklearn)

    def value_grad(self, V: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Objective and its gradient w.r.t. ``V`` (in the compute dtype)."""
        logits = self.Z @ V.T  # [N, K]
        picked = logits.gather(1, self.y[:, None]).squeeze(1)
        m = logits.max(dim=1).values
        probs = logits.sub_(m[:, None]).exp_()  # in place: one exp pass gives the softmax and the lse
        sumexp = probs.sum(dim=1)
        lse = m + sumexp.log()
        ce = (lse - picked).sum(dtype=torch.float64) / self.n
        probs.div_(sumexp[:, None]).scatter_add_(1, self.y[:, None], self.minus_one)  # softmax - onehot
        g = (probs.T @ self.Z).div_(self.n)  # [K, D+1]
        vw = V[:, :-1]
        w2 = (vw * vw).sum(dtype=torch.float64)
        g[:, :-1].add_(vw, alpha=self.reg)
        return float(ce + 0.5 * self.reg * w2), g

    def grad_maxabs(self, gV: torch.Tensor) -> float:
        """Max-abs gradient in the standardised, uncentred (W, b) coordinates: scikit-learn's stopping rule.

        With ``b~ = b + W m``, the chain rule gives ``dF/dW = dF/dW_c + (dF/db~) m^T`` and ``dF/db = dF/db~``.
        """
        gb = gV[:, -1]
        gw = gV[:, :-1] @ self.Q.T if self.Q is not None else gV[:, :-1]
        gw = gw + gb[:, None] * self.col_mean[None, :]
        return max(float(gw.abs().max()), float(gb.abs().max()))


def lbfgs(problem: Problem, V0: torch.Tensor, d: torch.Tensor, s_curv: float, *, max_iter: int, tol: float,
           memory: int = 10) -> tuple[torch.Tensor, int]:
    """Minimise ``problem`` over ``U`` (``V = U * d``) from ``V0``; returns ``(V, iterations)``."""
    # scipy's L-BFGS-B (used by sklearn) stops at a relative decrease of 64 eps in float64; with float32
    # matmuls the objective (summed in float64) is only good to ~1e-9 relative, so stop there instead.
    ftol = 64 * torch.finfo(torch.float64).eps if V0.dtype == torch.float64 else 2e-9
    U = V0 / d
    f, gV = problem.value_grad(U * d)
    if problem.grad_maxabs(gV) <= tol:
        return U * d, 0
    g = gV * d
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    rho: list[float] = []
    # In U coordinates the Hessian is ~ s_curv * I (see the module docstring): initial inverse scale 1/s.
    gamma = 1.0 / max(s_curv, 1e-12)
    it = 0
    for it in range(1, max_iter + 1):
        # two-loop recursion: p = -H g
        q = g.clone()
        alphas = []
        for s_i, y_i, r_i in zip(reversed(S), reversed(Y), reversed(rho)):
            a = r_i * float((s_i * q).sum())
            alphas.append(a)
            q.sub_(y_i, alpha=a)
        q.mul_(gamma)
        for (s_i, y_i, r_i), a in zip(zip(S, Y, rho), reversed(alphas)):
            b = r_i * float((y_i * q).sum())
            q.add_(s_i, alpha=a - b)
        p = q.neg_()
        gp = float((g * p).sum())
        if gp >= 0:  # not a descent direction (rounding): restart from the scaled gradient
            S.clear(), Y.clear(), rho.clear()
            p = -gamma * g
            gp = float((g * p).sum())
            if gp >= 0:
                break
        # Armijo backtracking from the unit step (accepted almost always once L-BFGS is scaled)
        t = 1.0
        accepted = False
        for _ in range(30):
            U_new = U + t * p
            f_new, gV_new = problem.value_grad(U_new * d)
            if math.isfinite(f_new) and f_new <= f + 1e-4 * t * gp:
                accepted = True
                break
            t *= 0.5 if math.isfinite(f_new) else 0.1
        if not accepted:
            break  # no decrease representable: converged to working precision
        g_new = gV_new * d
        s_vec, y_vec = U_new - U, g_new - g
        sy = float((s_vec * y_vec).sum())
        yy = float((y_vec * y_vec).sum())
        if sy > 1e-10 * yy and yy > 0:
            S.append(s_vec), Y.append(y_vec), rho.append(1.0 / sy)
            if len(S) > memory:
                S.pop(0), Y.pop(0), rho.pop(0)
            gamma = sy / yy
        f_old, U, f, g, gV = f, U_new, f_new, g_new, gV_new
        if problem.grad_maxabs(gV) <= tol:
            break
        if f_old - f <= ftol * max(abs(f_old), abs(f), 1.0):
            break  # relative decrease at the rounding level of the objective
    return U * d, it
