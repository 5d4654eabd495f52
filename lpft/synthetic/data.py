"""Problem construction for the two-layer linear setting (docs/theory.md §1, Setting and notation; fixture F: §3).

The ID support is a fixed m-dimensional subspace S of R^d with orthonormal basis ``Q_S`` (d, m) and complement
``Q_perp`` (d, d-m); training inputs span S, so S = rowspace(X) as in the paper (with m = n there).
Pretrained features are ``B0 = cos(theta) B_star + sin(theta) N`` with ``N B_star^T = 0``: every principal
angle between rowspace(B0) and rowspace(B_star) equals theta, the polar factor U is the identity and
``eps = min_U ||B0 - U B_star||_2 = 2 sin(theta / 2)`` exactly. All randomness comes from an explicit
``np.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import as_array, check_count, check_nonneg, check_rng

__all__ = [
    "Problem",
    "make_problem",
    "random_subspace",
    "orthonormal_rows",
    "complement_rows",
    "perturb_features",
    "whitened_design",
    "gaussian_design",
    "draw_head",
    "ood_covariance",
]


@dataclass(frozen=True)
class Problem:
    """One synthetic transfer problem (all arrays float64).

    Attributes:
        X: (n, d) training inputs, one per row. Y: (n,) noiseless labels ``X w_star``.
        B_star: (k, d) true features, orthonormal rows. v_star: (k,) true head. w_star: (d,) ``B_star^T v_star``.
        N: (k, d) orthonormal rows orthogonal to B_star (the perturbation direction).
        B0: (k, d) pretrained features ``cos(theta) B_star + sin(theta) N``.
        Q_S: (d, m) orthonormal basis of the ID subspace S. Q_perp: (d, d-m) basis of S^perp.
        theta: the principal angle between rowspace(B0) and rowspace(B_star).
    """

    X: np.ndarray
    Y: np.ndarray
    B_star: np.ndarray
    v_star: np.ndarray
    w_star: np.ndarray
    N: np.ndarray
    B0: np.ndarray
    Q_S: np.ndarray
    Q_perp: np.ndarray
    theta: float

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def k(self) -> int:
        return self.B0.shape[0]

    @property
    def m(self) -> int:
        return self.Q_S.shape[1]

    @property
    def P_S(self) -> np.ndarray:
        return self.Q_S @ self.Q_S.T

    @property
    def P_perp(self) -> np.ndarray:
        return self.Q_perp @ self.Q_perp.T

    @property
    def Sigma_hat(self) -> np.ndarray:
        """Empirical second moment ``X^T X / n`` (= P_S for the whitened design)."""
        return self.X.T @ self.X / self.n

    def with_theta(self, theta: float) -> "Problem":
        """The same problem (same B_star, N, X, w_star) with features rotated by a different angle."""
        return Problem(self.X, self.Y, self.B_star, self.v_star, self.w_star, self.N,
                       perturb_features(self.B_star, self.N, theta), self.Q_S, self.Q_perp, float(theta))


def random_subspace(rng: np.random.Generator, d: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``Q = qr(N(0,1)^{d x d})``; return ``(Q[:, :m], Q[:, m:])``."""
    check_rng(rng)
    d = check_count("d", d, 2)
    m = check_count("m", m, 1)
    if m >= d:
        raise ValueError(f"m must be < d (S must have a non-trivial complement), got m={m}, d={d}")
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return Q[:, :m].copy(), Q[:, m:].copy()


def orthonormal_rows(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """(k, d) matrix with orthonormal rows: orthonormalised Gaussian rows."""
    check_rng(rng)
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
    Q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return Q.T.copy()


def complement_rows(rng: np.random.Generator, B: np.ndarray) -> np.ndarray:
    """(k, d) orthonormal rows orthogonal to the rows of ``B`` (orthonormal rows, 2k <= d)."""
    check_rng(rng)
    B = as_array("B", B, 2, "k x d orthonormal rows")
    k, d = B.shape
    if 2 * k > d:
        raise ValueError(f"need 2k <= d to find k directions orthogonal to B, got k={k}, d={d}")
    G = rng.standard_normal((d, k))
    G -= B.T @ (B @ G)
    Q, _ = np.linalg.qr(G)
    Q -= B.T @ (B @ Q)  # one re-orthogonalisation pass for round-off
    Q, _ = np.linalg.qr(Q)
    return Q.T.copy()


def perturb_features(B_star, N, theta: float) -> np.ndarray:
    """``B0 = cos(theta) B_star + sin(theta) N`` (docs/theory.md §1; eps = 2 sin(theta/2))."""
    B_star = as_array("B_star", B_star, 2, "k x d")
    N = as_array("N", N, 2, "k x d")
    if N.shape != B_star.shape:
        raise ValueError(f"N must have the shape of B_star {B_star.shape}, got {N.shape}")
    theta = float(theta)
    if not np.isfinite(theta):
        raise ValueError("theta must be finite")
    return np.cos(theta) * B_star + np.sin(theta) * N


def whitened_design(rng: np.random.Generator, Q_S, n: int) -> np.ndarray:
    """``X = sqrt(n) Z Q_S^T`` with ``Z^T Z = I_m``: X^T X / n = P_S exactly, so L_hat = L_id."""
    check_rng(rng)
    Q_S = as_array("Q_S", Q_S, 2, "d x m orthonormal basis")
    m = Q_S.shape[1]
    n = check_count("n", n, m)
    Z, _ = np.linalg.qr(rng.standard_normal((n, m)))
    return np.sqrt(n) * Z @ Q_S.T


def gaussian_design(rng: np.random.Generator, Q_S, n: int) -> np.ndarray:
    """``X = G Q_S^T`` with G ~ N(0,1)^{n x m}: Gaussian inputs supported on S (use n >= 4m, see Sec. 5)."""
    check_rng(rng)
    Q_S = as_array("Q_S", Q_S, 2, "d x m orthonormal basis")
    n = check_count("n", n, Q_S.shape[1])
    return rng.standard_normal((n, Q_S.shape[1])) @ Q_S.T


def make_problem(rng: np.random.Generator, *, d: int = 20, k: int = 3, m: int = 8, n: int = 16,
                 theta: float = 0.0, v_star_norm: float = 1.0, design: str = "whitened") -> Problem:
    """Build fixture F of docs/theory.md §3 (defaults d=20, k=3, m=8, n=16).

    Draw order (fixed, so that changing ``theta`` or ``v_star_norm`` keeps everything else): Q, B_star,
    v_star direction, N, X.

    Args:
        rng: the only source of randomness.
        d, k, m, n: input dim, feature dim, dim of S, number of training points (k < m, k <= d - m, n >= m).
        theta: angle between pretrained and true features.
        v_star_norm: ``||v_star||``.
        design: ``"whitened"`` (X^T X / n = P_S) or ``"gaussian"`` (Gaussian on S).
    """
    check_rng(rng)
    d, k, m, n = (check_count(nm, x, 1) for nm, x in (("d", d), ("k", k), ("m", m), ("n", n)))
    if not (k < m and k <= d - m and 2 * k <= d):
        raise ValueError(f"need k < m and k <= d - m (module regime), got d={d}, k={k}, m={m}")
    if n < m:
        raise ValueError(f"n must be >= m so that the inputs span S, got n={n}, m={m}")
    if design not in ("whitened", "gaussian"):
        raise ValueError(f"design must be 'whitened' or 'gaussian', got {design!r}")
    v_star_norm = check_nonneg("v_star_norm", v_star_norm)
    Q_S, Q_perp = random_subspace(rng, d, m)
    B_star = orthonormal_rows(rng, k, d)
    g = rng.standard_normal(k)
    v_star = v_star_norm * g / np.linalg.norm(g)
    N = complement_rows(rng, B_star)
    X = whitened_design(rng, Q_S, n) if design == "whitened" else gaussian_design(rng, Q_S, n)
    w_star = B_star.T @ v_star
    return Problem(X, X @ w_star, B_star, v_star, w_star, N, perturb_features(B_star, N, theta), Q_S, Q_perp,
                   float(theta))


def draw_head(rng: np.random.Generator, k: int, sigma: float, *, v_star0=None, min_phi: float = 0.0,
              max_tries: int = 1000) -> np.ndarray:
    """Head init ``v0 = sigma g``, g ~ N(0, I_k), re-drawn until ``phi(v0, v_star0) >= min_phi``.

    ``phi^2 = |(v0^T v*)^2 - (v*^T v*)^2|`` is the initial head alignment error of Thm 3.1 (submission) /
    Thm 3.2 (arXiv); ``v_star0`` is the true head in B0's frame.
    """
    check_rng(rng)
    sigma = check_nonneg("sigma", sigma)
    for _ in range(max_tries):
        v0 = sigma * rng.standard_normal(k)
        if min_phi <= 0:
            return v0
        if v_star0 is None:
            raise ValueError("v_star0 is needed when min_phi > 0")
        vs = np.asarray(v_star0, dtype=np.float64)
        if np.sqrt(abs(float(v0 @ vs) ** 2 - float(vs @ vs) ** 2)) >= min_phi:
            return v0
    raise ValueError(f"no head with phi >= {min_phi} found in {max_tries} draws (sigma={sigma})")


def ood_covariance(Q_S, Q_perp, a_S: float, a_perp: float) -> np.ndarray:
    """``Sigma_ood = a_S P_S + a_perp P_perp`` (a_perp > 0 puts OOD mass outside S; a_S=0, a_perp=1: pure shift)."""
    Q_S = as_array("Q_S", Q_S, 2, "d x m")
    Q_perp = as_array("Q_perp", Q_perp, 2, "d x (d-m)")
    a_S = check_nonneg("a_S", a_S)
    a_perp = check_nonneg("a_perp", a_perp)
    return a_S * Q_S @ Q_S.T + a_perp * Q_perp @ Q_perp.T
