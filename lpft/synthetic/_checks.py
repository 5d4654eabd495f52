"""Input validation shared by the synthetic modules (private).

Every public function converts its array arguments with these helpers, so bad input fails early with a
``ValueError`` that names the argument and says what was expected.
"""

from __future__ import annotations

import numpy as np


def as_array(name: str, a, ndim: int, shape_hint: str) -> np.ndarray:
    """Return ``a`` as a finite float64 array with ``ndim`` dimensions, else raise ValueError."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real {ndim}-D array ({shape_hint}); could not convert: {exc}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array ({shape_hint}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values (no NaN/inf)")
    return arr


def check_data(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """Validate the training set: X (n, d) with one input per row, Y (n,)."""
    X = as_array("X", X, 2, "n inputs x d, one input per row")
    Y = as_array("Y", Y, 1, "n labels")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y must have one label per row of X: X has {X.shape[0]} rows, Y has {Y.shape[0]} entries")
    if X.shape[0] == 0:
        raise ValueError("X must have at least one row (input)")
    return X, Y


def check_features(B, d: int | None = None, name: str = "B0") -> np.ndarray:
    """Validate a feature extractor B (k, d) with 1 <= k < d (and d matching the data if given)."""
    B = as_array(name, B, 2, "k features x d inputs")
    k, dB = B.shape
    if d is not None and dB != d:
        raise ValueError(f"{name} must have d={d} columns to match X, got shape {B.shape}")
    if not 1 <= k < dB:
        raise ValueError(f"{name} must have 1 <= k < d (k rows, d columns), got k={k}, d={dB}")
    return B


def check_head(v, k: int, name: str = "v0") -> np.ndarray:
    """Validate a head v (k,)."""
    v = as_array(name, v, 1, "k head weights")
    if v.shape[0] != k:
        raise ValueError(f"{name} must have k={k} entries to match the features, got shape {v.shape}")
    return v


def check_vector(name: str, w, d: int) -> np.ndarray:
    w = as_array(name, w, 1, f"length-{d} vector")
    if w.shape[0] != d:
        raise ValueError(f"{name} must have length d={d}, got shape {w.shape}")
    return w


def check_psd(Sigma, d: int, name: str = "Sigma") -> np.ndarray:
    """Validate a symmetric positive semidefinite (d, d) matrix."""
    S = as_array(name, Sigma, 2, f"{d} x {d} symmetric PSD matrix")
    if S.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}), got {S.shape}")
    scale = max(1.0, float(np.max(np.abs(S))))
    if np.max(np.abs(S - S.T)) > 1e-10 * scale:
        raise ValueError(f"{name} must be symmetric")
    if np.linalg.eigvalsh(S).min() < -1e-10 * scale:
        raise ValueError(f"{name} must be positive semidefinite")
    return S


def check_nonneg(name: str, x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative real number, got {x!r}") from None
    if not np.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {x}")
    return x


def check_positive(name: str, x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive real number, got {x!r}") from None
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {x}")
    return x


def check_count(name: str, x, minimum: int = 0) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x}")
    return int(x)


def check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng
