"""Benchmark of lpft.synthetic: the theory test suite, and gradient flow vs gradient descent.

    python bench/synthetic.py [--tol 1e-5] [--horizon 20]

1. Runs ``pytest tests/synthetic`` (without the notebook test) in a subprocess and reports wall and CPU time.
2. Fixture F (seed 0, theta 0.05, sigma 1): one DOP853 gradient-flow solve to time T vs gradient descent with a
   step small enough that its endpoint is within ``tol`` of the gradient-flow endpoint w_GF(T) (GD is a
   first-order integrator of the flow: error ~ C eta; C is measured, eta = 0.8 tol / C, halved until the
   accuracy is met). Prints both times and their ratio, from one run of each.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bench_suite() -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/synthetic",
         "--deselect", "tests/synthetic/test_notebook.py::test_notebook_writes_every_figure"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = [ln for ln in proc.stdout.splitlines() if " passed" in ln or " failed" in ln]
    print(f"suite: {tail[-1] if tail else proc.stdout[-500:]}")
    return wall, cpu, proc.returncode


def bench_gf_vs_gd(tol: float, horizon: float) -> tuple[float, float, float, float]:
    import lpft.synthetic as S

    P = S.make_problem(np.random.default_rng(0), theta=0.05)
    _, U = S.feature_distance(P.B0, P.B_star)
    v0 = S.draw_head(np.random.default_rng(1000), P.k, 1.0, v_star0=U @ P.v_star, min_phi=0.3)

    t0 = time.perf_counter()
    v, B = S.fine_tune(P.X, P.Y, v0, P.B0, T=horizon)
    t_gf = time.perf_counter() - t0
    w_gf = B.T @ v
    v_ref, B_ref = S.fine_tune(P.X, P.Y, v0, P.B0, T=horizon, rtol=1e-13, atol=1e-15)
    err_gf = float(np.linalg.norm(w_gf - B_ref.T @ v_ref))

    def gd_error(eta):
        t = time.perf_counter()
        vg, Bg = S.fine_tune(P.X, P.Y, v0, P.B0, lr=eta, steps=int(round(horizon / eta)))
        return float(np.linalg.norm(Bg.T @ vg - w_gf)), time.perf_counter() - t

    e1, _ = gd_error(0.01)
    C = e1 / 0.01
    eta = 0.8 * tol / C
    while True:
        err, t_gd = gd_error(eta)
        if err <= tol:
            break
        eta /= 2
    print(f"gradient flow (DOP853, rtol 1e-10, atol 1e-12) to T={horizon:g}: {t_gf * 1e3:.1f} ms, "
          f"||w - w_ref|| = {err_gf:.1e}")
    print(f"gradient descent eta={eta:.3g} ({int(round(horizon / eta))} steps): {t_gd * 1e3:.1f} ms, "
          f"||w_GD(T) - w_GF(T)|| = {err:.1e} <= tol {tol:g}")
    return t_gf, t_gd, err_gf, err


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tol", type=float, default=1e-5, help="GD accuracy target for ||w_GD(T) - w_GF(T)||")
    ap.add_argument("--horizon", type=float, default=20.0, help="gradient-flow horizon T")
    ap.add_argument("--skip-suite", action="store_true", help="only run the GF vs GD comparison")
    args = ap.parse_args(argv)
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if not args.skip_suite:
        wall, cpu, rc = bench_suite()
        print(f"theory suite (pytest tests/synthetic, no notebook): wall {wall:.1f} s, CPU {cpu:.1f} s, exit {rc}")
    t_gf, t_gd, _, _ = bench_gf_vs_gd(args.tol, args.horizon)
    print(f"ratio GD / GF time at equal accuracy ({args.tol:g}): {t_gd / t_gf:.0f}x")


if __name__ == "__main__":
    main()
