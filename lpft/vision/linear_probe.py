"""Linear probing: L2-regularised multinomial logistic regression over a C path, in torch.

LP-FT (Kumar et al., 2022, arXiv 2202.10054) trains the linear probe with scikit-learn's
``LogisticRegression`` (lbfgs, multinomial, L2) on frozen features, sweeping
``C in np.logspace(-7, 2, 50)`` warm-started from small to large C and choosing C by ID validation accuracy.
This module solves the *same* problem, per C::

    minimise_{W, b}   C * sum_i CE(W x_i + b, y_i)  +  0.5 * ||W||_F^2        (b is not penalised)

on features standardised as in LP-FT's ``log_reg_sk.py``: one scalar mean ``mu`` and std ``sigma`` over all
entries of the train matrix. The returned head is un-standardised, ``W' = W / sigma`` and
``b' = b - mu * W' 1``, so that ``x @ W'.T + b'`` equals the standardised model's logits on raw features.

Solver (why it is faster than scikit-learn's lbfgs at equal accuracy):

* the data are a torch tensor on the GPU when there is one; the big matmuls run in float32 (half the cost
  of scikit-learn's float64 on CPU). Statistics, the eigendecomposition below and the final head are float64.
* full-batch L-BFGS (memory 10, Armijo backtracking from the unit step) in a *preconditioned*
  parametrisation. The standardised features are column-centred (the shift is absorbed exactly by the
  unpenalised intercept, ``b~ = b + W m``, which decouples ``b`` from ``W``), and with
  ``X_c^T X_c / N = Q diag(lam) Q^T`` (one eigendecomposition, computed once) the weights are
  ``W = U diag(d) Q^T`` with ``d = (lam + delta_C)^(-1/2)``, ``delta_C = 1 / (C N s)`` and ``s`` the mean
  softmax curvature ``p (1 - p)`` at the warm start. This approximates a Newton scaling of the block Hessian
  ``s X_c^T X_c / N + I / (C N)``, so L-BFGS needs fewer iterations on anisotropic features. It is a change
  of variables only: the objective, its minimiser and the stopping rule are unchanged.
* the stopping rule is scikit-learn's: the max-abs gradient of the objective divided by ``C N`` (mean loss +
  ``||W||^2 / (2 C N)``), taken in the standardised ``(W, b)`` coordinates, is at most ``tol`` (1e-4), or
  ``max_iter`` iterations (200, as LP-FT), or no further decrease is possible in floating point.

float32 is enough here: the objective is summed in float64, and at ``tol=1e-4`` on the mean-loss gradient
the float32 rounding of the matmuls (~1e-7 relative) is far below the tolerance; the tests check the
weights and objective against scikit-learn's float64 solution. Pass ``dtype=torch.float64`` for more.

Note: ``lpft.vision`` re-exports the function :func:`linear_probe`, which shadows this module's name on the
package, so ``lpft.vision.linear_probe`` is the function; import from this module with
``from lpft.vision.linear_probe import linear_probe, LinearProbeResult``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from lpft.vision.progress import tqdm

from lpft.vision.features import resolve_device
from lpft.vision.lbfgs import Problem as _Problem
from lpft.vision.lbfgs import lbfgs as _lbfgs

__all__ = ["linear_probe", "LinearProbeResult", "default_cs"]

logger = logging.getLogger(__name__)


def default_cs(num: int = 50) -> list[float]:
    """LP-FT's regularisation grid: ``num`` values log-spaced from 1e-7 to 1e2 (``np.logspace(-7, 2, num)``)."""
    return [float(c) for c in np.logspace(-7, 2, num)]


@dataclasses.dataclass
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        weight: ``[num_classes, dim]`` float32 CPU tensor applying to RAW (un-standardised) features; rows of
            classes absent from the training set are zero.
        bias: ``[num_classes]`` float32 CPU tensor (zero for absent classes).
        C: the chosen inverse regularisation strength.
        val_acc: ID validation accuracy of the chosen C (in [0, 1]).
        path: ``[(C, val_acc), ...]`` for every C, in increasing C.
        n_iter: L-BFGS iterations used at each C (same order as ``path``).
        mean: scalar mean of the train features used for standardisation.
        std: scalar std (ddof=0) of the train features used for standardisation.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    val_acc: float
    path: list[tuple[float, float]]
    n_iter: list[int] = dataclasses.field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    def logits(self, features: Any) -> torch.Tensor:
        """Logits ``features @ weight.T + bias`` for raw features ``[N, dim]`` (CPU, float32)."""
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        return x.to(torch.float32).cpu() @ self.weight.T + self.bias


# ----------------------------------------------------------------------------------------------------------
# input handling


def _as_tensor(name: str, a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold real numbers, got numpy dtype {a.dtype}")
        return torch.from_numpy(np.ascontiguousarray(a))
    raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")


def _check_features(name: str, a: Any) -> torch.Tensor:
    x = _as_tensor(name, a)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [num_samples, dim] array, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_labels(name: str, a: Any, n: int) -> torch.Tensor:
    y = _as_tensor(name, a)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels but the features have {n} rows")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not torch.equal(y, y.round()):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.to(torch.long)
    if (y < 0).any():
        raise ValueError(f"{name} contains negative labels (min {int(y.min())}); expected 0..num_classes-1")
    return y


def _scalar_mean_std(x: torch.Tensor, chunk: int = 1 << 16) -> tuple[float, float]:
    """Mean and std (ddof=0) over all entries, accumulated in float64 by row chunks (no full copy)."""
    total = sum(float(x[i : i + chunk].sum(dtype=torch.float64)) for i in range(0, x.shape[0], chunk))
    mu = total / x.numel()
    sq = sum(
        float(((x[i : i + chunk].to(torch.float64) - mu) ** 2).sum()) for i in range(0, x.shape[0], chunk)
    )
    return mu, math.sqrt(sq / x.numel())


def _check_cs(Cs: Sequence[float] | None) -> list[float]:
    if Cs is None:
        return default_cs()
    try:
        cs = [float(c) for c in np.asarray(Cs, dtype=float).reshape(-1)]
    except (TypeError, ValueError):
        raise ValueError(f"Cs must be a sequence of positive numbers, got {Cs!r}") from None
    if not cs:
        raise ValueError("Cs is empty: give at least one positive C")
    if any(not math.isfinite(c) or c <= 0 for c in cs):
        raise ValueError(f"every C must be finite and > 0, got {cs}")
    return sorted(set(cs))  # warm start runs from strong to weak regularisation


@torch.no_grad()
def linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    Cs: Sequence[float] | None = None,
    *,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    dtype: torch.dtype = torch.float32,
    precondition: bool = True,
    progress: bool = True,
) -> LinearProbeResult:
    """Fit LP-FT's linear probe: multinomial L2 logistic regression over a C path, C chosen on ID val.

    For each C (increasing, each fit warm-started from the previous one) this minimises
    ``C * sum_i CE(W x_i + b, y_i) + 0.5 ||W||^2`` (the intercept is not penalised), i.e. scikit-learn's
    ``LogisticRegression(C=C)`` objective, on scalar-standardised train features (one mean and std over all
    entries, as LP-FT's ``log_reg_sk.py``). The C with the highest ID validation accuracy wins; ties go to
    the smaller C. The returned head applies to RAW features.

    Args:
        train_x: ``[N, D]`` train features (torch tensor or numpy array, real numbers, finite).
        train_y: ``[N]`` integer labels in ``0..num_classes-1``.
        val_x: ``[M, D]`` ID validation features.
        val_y: ``[M]`` ID validation labels.
        Cs: inverse regularisation strengths; default LP-FT's 50 values ``np.logspace(-7, 2, 50)``.
        num_classes: total number of classes; classes absent from train get zero weight and bias rows
            (LP-FT's ``pad_head``). Default: ``max(train_y) + 1``. Validation accuracy, as in LP-FT, is
            that of the model over the classes present in train (padded rows are not candidates).
        device: ``None``/``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        max_iter: L-BFGS iterations per C (LP-FT: 200).
        tol: stop when the max-abs gradient of ``mean CE + ||W||^2/(2CN)`` is below this (scikit-learn's rule).
        dtype: dtype of the big matmuls (float32 default, float64 for extra precision).
        precondition: use the eigenbasis preconditioner (costs one ``(D+1)x(D+1)`` eigendecomposition).
        progress: show a tqdm bar over the C path.

    Returns:
        A :class:`LinearProbeResult`.

    Raises:
        ValueError: on malformed inputs (shapes, dtypes, non-finite values, labels out of range, fewer than
            two classes in train, constant features, bad Cs).
    """
    x_tr = _check_features("train_x", train_x)
    x_va = _check_features("val_x", val_x)
    if x_va.shape[1] != x_tr.shape[1]:
        raise ValueError(f"val_x has {x_va.shape[1]} features but train_x has {x_tr.shape[1]}")
    y_tr = _check_labels("train_y", train_y, x_tr.shape[0])
    y_va = _check_labels("val_y", val_y, x_va.shape[0])
    if num_classes is None:
        num_classes = int(y_tr.max()) + 1
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    for name, y in (("train_y", y_tr), ("val_y", y_va)):
        if int(y.max()) >= num_classes:
            raise ValueError(
                f"{name} contains label {int(y.max())} but num_classes is {num_classes}; "
                "labels must lie in 0..num_classes-1 (pass num_classes explicitly)"
            )
    cs = _check_cs(Cs)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    present = torch.unique(y_tr)
    if present.numel() < 2:
        raise ValueError(f"train_y must contain at least two classes, found {present.tolist()}")
    dev = resolve_device(device)

    # LP-FT standardisation: a single scalar mean/std over all train entries (np.std, ddof=0).
    mu, sigma = _scalar_mean_std(x_tr)
    if not sigma > 0:
        raise ValueError("train_x is constant (std 0): cannot standardise")

    # Fit over the classes present in train only (like sklearn), then pad the others with zeros.
    remap = torch.full((num_classes,), -1, dtype=torch.long)
    remap[present] = torch.arange(present.numel())
    k = present.numel()
    n, dim = x_tr.shape

    # Centre the columns (b~ = b + W m absorbs the shift), then rotate into the eigenbasis of the
    # second-moment matrix for the preconditioner; append the intercept column.
    xs_tr = x_tr.to(dev, dtype).sub(mu).div_(sigma)
    col_mean = xs_tr.mean(dim=0)
    xs_tr -= col_mean
    xs_va = x_va.to(dev, dtype).sub(mu).div_(sigma).sub_(col_mean)
    if precondition:
        gram = ((xs_tr.T @ xs_tr) / n).to(torch.float64)
        lam, Q = torch.linalg.eigh(gram)
        lam = lam.clamp_min(0).to(dtype)
        Qc = Q.to(dtype)  # the parametrisation is exactly W = V_w Qc^T
        xs_tr, xs_va = xs_tr @ Qc, xs_va @ Qc
        del gram, Q
    else:
        lam, Qc = None, None

    def with_ones(x):
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=dtype, device=dev)], dim=1)

    Z, Zv = with_ones(xs_tr), with_ones(xs_va)
    del xs_tr, xs_va
    yt = remap[y_tr].to(dev)
    yv = remap[y_va].to(dev)  # -1 for val classes never seen in train: always counted wrong

    V = torch.zeros(k, dim + 1, dtype=dtype, device=dev)
    path: list[tuple[float, float]] = []
    iters: list[int] = []
    best_acc, best_c, best_V = -1.0, None, None
    bar = tqdm(cs, desc="linear probe (C path)", disable=not progress, leave=False)
    for c in bar:
        problem = _Problem(Z, yt, Qc, col_mean, c)
        if precondition:
            # mean softmax curvature p(1-p) at the warm start sets the data/regulariser balance
            p = torch.softmax(Z @ V.T, dim=1)
            s_curv = float((p * (1 - p)).mean())
            delta = 1.0 / (c * n * max(s_curv, 1e-12))
            d = torch.cat([(lam + delta).rsqrt(), torch.ones(1, dtype=dtype, device=dev)])
        else:
            s_curv = 1.0
            d = torch.ones(dim + 1, dtype=dtype, device=dev)
        V, it = _lbfgs(problem, V, d, s_curv if precondition else 1.0, max_iter=max_iter, tol=tol)
        acc = float((torch.argmax(Zv @ V.T, dim=1) == yv).to(torch.float64).mean())
        path.append((c, acc))
        iters.append(it)
        if it >= max_iter:
            logger.info("linear probe: C=%g hit max_iter=%d", c, max_iter)
        if acc > best_acc:  # strict: ties keep the smaller C
            best_acc, best_c, best_V = acc, c, V.clone()
        bar.set_postfix(C=f"{c:.2g}", val_acc=f"{acc:.4f}", best=f"{best_acc:.4f}")
    bar.close()

    # back to standardised (W, b), then to raw features: W' = W / sigma, b' = b - mu * W' 1
    best_V = best_V.to(torch.float64).cpu()
    w_std, b_shift = best_V[:, :-1], best_V[:, -1]
    if precondition:
        w_std = w_std @ Qc.to(torch.float64).cpu().T
    b_std = b_shift - w_std @ col_mean.to(torch.float64).cpu()
    w_raw = w_std / sigma
    b_raw = b_std - mu * w_raw.sum(dim=1)
    weight = torch.zeros(num_classes, dim, dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    weight[present] = w_raw
    bias[present] = b_raw
    return LinearProbeResult(
        weight=weight.to(torch.float32),
        bias=bias.to(torch.float32),
        C=float(best_c),
        val_acc=float(best_acc),
        path=path,
        n_iter=iters,
        mean=mu,
        std=sigma,
    )
