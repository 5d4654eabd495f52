"""Shared fixtures for the synthetic-theory tests (docs/theory.md §3, fixture F).

Every test of a prediction Txx records its worst measured deviation (or slack) next to the tolerance it asserts
through the ``report`` fixture; the table is printed at the end of the pytest run.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from lpft.synthetic import draw_head, feature_distance, make_problem, principal_cosines

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_REPORT: list[tuple[str, str, float, float, str]] = []


def make_F(seed: int, theta: float = 0.0, sigma: float = 1.0, *, v_star_norm: float = 1.0, min_phi: float = 0.0,
           **kwargs) -> SimpleNamespace:
    """Fixture F: d=20, k=3, m=8, n=16, whitened design; head ``v0 = sigma g`` from the separate seed 1000+seed.

    Asserts the non-degeneracy c_S, c_perp >= 0.1 required by docs/theory.md §1; ``min_phi`` re-draws g until
    phi >= min_phi (FT-vs-LP claims use 0.3).
    """
    P = make_problem(np.random.default_rng(seed), theta=theta, v_star_norm=v_star_norm, **kwargs)
    c_S, c_perp = principal_cosines(P.B0, P.Q_S, P.Q_perp)
    assert c_S >= 0.1 and c_perp >= 0.1, f"degenerate fixture (seed {seed}): c_S={c_S:.3f}, c_perp={c_perp:.3f}"
    eps, U = feature_distance(P.B0, P.B_star)
    v_star0 = U @ P.v_star
    v0 = draw_head(np.random.default_rng(1000 + seed), P.k, sigma, v_star0=v_star0, min_phi=min_phi)
    return SimpleNamespace(P=P, v0=v0, c_S=c_S, c_perp=c_perp, eps=eps, U=U, v_star0=v_star0, seed=seed,
                           theta=theta, sigma=sigma)


@pytest.fixture(scope="session", name="make_F")
def make_F_fixture():
    """The fixture-F builder :func:`make_F` (a fixture so that test modules need not import conftest)."""
    return make_F


@pytest.fixture(scope="session")
def report():
    """``report(test, quantity, measured, tolerance, relation)``: record a measured value against its bound."""

    def record(test: str, quantity: str, measured: float, tolerance: float, relation: str = "<=") -> None:
        _REPORT.append((test, quantity, float(measured), float(tolerance), relation))

    return record


def pytest_terminal_summary(terminalreporter):
    if not _REPORT:
        return
    tr = terminalreporter
    tr.section("synthetic theory: measured vs tolerance (worst case over the runs of each test)")
    merged: dict[tuple[str, str, str, float], float] = {}
    for test, q, val, tol, rel in _REPORT:
        key = (test, q, rel, tol)
        if key not in merged:
            merged[key] = val
        elif rel in ("<=", "<"):
            merged[key] = max(merged[key], val)
        else:
            merged[key] = min(merged[key], val)
    for (test, q, rel, tol), val in sorted(merged.items()):
        tr.write_line(f"{test:5s} {q:58s} {val: .3e} {rel} {tol:.3e}")
