"""Figures of the two-layer linear theory (docs/theory.md §4, Figures), drawn with matplotlib's Agg canvas.

matplotlib is imported inside the functions, so ``import lpft.synthetic`` never loads it. Each ``fig_*``
function computes its data with the package's own simulators / closed forms, writes ``<name>.png`` and
``<name>.pdf`` atomically into ``out_dir`` and returns the two paths. :func:`make_all_figures` draws them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import closed_form as cf
from .data import draw_head, make_problem, ood_covariance
from .dynamics import fine_tune, fine_tune_trajectory, linear_probe, lp_ft, lp_ft_trajectory
from .model import conserved_quantity, id_loss, ood_loss
from .wise import wise_curves

__all__ = [
    "fig2_toy",
    "fig_ood_vs_eps",
    "fig_loss_trajectories",
    "fig_feature_change",
    "fig_wise_curves",
    "fig_gd_drift",
    "make_all_figures",
    "FIGURES",
]


def _new_figure(ncols: int = 1, width: float = 4.6, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, out_dir, name: str) -> list[Path]:
    from lpft.vision.io import atomic_path  # plain-Python helper, no torch import

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # laid out once here, not once per format
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(path)
    return paths


def _F(seed: int, theta: float, sigma: float, min_phi: float = 0.3):
    P = make_problem(np.random.default_rng(seed), theta=theta)
    eps, U = cf.feature_distance(P.B0, P.B_star)
    v0 = draw_head(np.random.default_rng(1000 + seed), P.k, sigma, v_star0=U @ P.v_star, min_phi=min_phi)
    return P, v0, eps, U


def _bound(P, v0, eps, U):
    c_S, c_perp = cf.principal_cosines(P.B0, P.Q_S, P.Q_perp)
    phi = cf.head_alignment_error(v0, U @ P.v_star)
    return cf.ft_ood_lower_bound(c_perp, P.k, phi, np.linalg.norm(P.w_star), eps)


def fig2_toy(out_dir, *, beta_star: float = 1.0, beta0: float = 1.1, v_star: float = 1.5,
             v0: float = 2.5) -> list[Path]:
    """Kumar et al. (2022) Fig. 2, COMPUTED: d=2, k=1, one training input x_id = e1 (S = span(e1)).

    LP rescales b0 so that w_lp fits x_id; FT (exact limit, docs/theory.md §2.7) moves b only along x_id and
    rescales. Both fit x_id (all predictors lie on the line w_1 = w*_1); their errors on x_ood = e2 differ.
    """
    b_star = np.array([np.cos(beta_star), np.sin(beta_star)])
    b0 = np.array([np.cos(beta0), np.sin(beta0)])
    w_star = v_star * b_star
    Q_S = np.array([[1.0], [0.0]])
    X = np.array([[1.0, 0.0]])
    Y = X @ w_star
    v_lp = linear_probe(X, Y, b0[None])[0]
    w_lp = v_lp * b0
    v_inf, b_ft, w_ft = cf.ft_limit_k1(v0, b0, w_star, Q_S)
    # cross-check the closed form against the simulator
    v_sim, B_sim = fine_tune(X, Y, np.array([v0]), b0[None], T=200.0)
    assert np.allclose(B_sim[0] * v_sim[0], w_ft, atol=1e-7)

    fig, (ax,) = _new_figure(1, 5.2, 4.6)
    arrows = [(w_star, "w* (true)", "k"), (b0, "B0 (pretrained)", "tab:gray"), (w_lp, "w_lp = v_lp B0", "tab:blue"),
              (b_ft, "B_ft", "tab:orange"), (w_ft, "w_ft = v_ft B_ft", "tab:red")]
    for vec, label, color in arrows:
        ax.annotate("", xy=vec, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=color, lw=2))
        ax.plot([], [], color=color, lw=2, label=label)
    ax.axvline(w_star[0], color="k", ls=":", lw=1, label="{w : w^T x_id = y_id}")
    ax.annotate("x_id", xy=(1.0, 0), xytext=(1.02, 0.04))
    ax.annotate("x_ood", xy=(0, 1.0), xytext=(0.03, 1.02))
    ax.plot([0, 1], [0, 0], color="tab:green", lw=4, alpha=0.3)
    ax.plot([0, 0], [0, 1], color="tab:purple", lw=4, alpha=0.3)
    lim = 1.15 * max(np.abs(np.concatenate([w_star, b0, w_lp, b_ft, w_ft]))) + 0.1
    ax.set_xlim(-0.1, lim)
    ax.set_ylim(-0.1, lim)
    ax.set_aspect("equal")
    ax.set_title(f"Fig. 2 toy (exact k=1 limit): L_ood LP {ood_loss(w_lp, w_star):.3f}, "
                 f"FT {ood_loss(w_ft, w_star):.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, out_dir, "fig2_toy")


def fig_ood_vs_eps(out_dir, *, seed: int = 0, thetas=None, T: float = 100.0) -> list[Path]:
    """sqrt(L_ood) vs eps (log-log) for LP, FT (sigma in {0.1, 1}), LP-FT, with the FT lower bound
    (Thm 3.1 sub. = Thm 3.2 arXiv) and the [D] LP upper bound (docs/theory.md §2.4). Fixture F, Sigma = I."""
    thetas = np.logspace(-3, -0.3, 7) if thetas is None else np.asarray(thetas, dtype=float)
    rows = {"LP": [], "FT sigma=0.1": [], "FT sigma=1": [], "LP-FT": [], "bound sigma=0.1": [], "bound sigma=1": [],
            "LP bound": []}
    eps_list = []
    for theta in thetas:
        P, _, eps, U = _F(seed, theta, 1.0)
        eps_list.append(eps)
        rows["LP"].append(np.sqrt(ood_loss(P.B0.T @ linear_probe(P.X, P.Y, P.B0), P.w_star)))
        v, B = lp_ft(P.X, P.Y, P.B0, T=T)
        rows["LP-FT"].append(np.sqrt(ood_loss(B.T @ v, P.w_star)))
        for sigma in (0.1, 1.0):
            _, v0, _, _ = _F(seed, theta, sigma)
            v, B = fine_tune(P.X, P.Y, v0, P.B0, T=T)
            rows[f"FT sigma={sigma:g}"].append(np.sqrt(ood_loss(B.T @ v, P.w_star)))
            rows[f"bound sigma={sigma:g}"].append(_bound(P, v0, eps, U))
        c_S, _ = cf.principal_cosines(P.B0, P.Q_S, P.Q_perp)
        rows["LP bound"].append(cf.lp_ood_upper_bound(theta, np.linalg.norm(P.v_star), c_S))
    eps = np.array(eps_list)
    fig, (ax,) = _new_figure(1, 5.4, 4.2)
    styles = {"LP": ("tab:blue", "-o"), "FT sigma=0.1": ("tab:red", "-s"), "FT sigma=1": ("tab:orange", "-s"),
              "LP-FT": ("tab:green", "-^"), "bound sigma=0.1": ("tab:red", ":"), "bound sigma=1": ("tab:orange", ":"),
              "LP bound": ("tab:blue", "--")}
    for name, vals in rows.items():
        vals = np.array(vals)
        ok = vals > 0  # the FT bound is vacuous (negative) for large eps
        color, fmt = styles[name]
        label = {"bound sigma=0.1": "FT lower bound (sigma=0.1)", "bound sigma=1": "FT lower bound (sigma=1)",
                 "LP bound": "LP upper bound [D]"}.get(name, name)
        ax.loglog(eps[ok], vals[ok], fmt, color=color, label=label, ms=4)
    ax.set_xlabel("eps = min_U ||B0 - U B*||_2")
    ax.set_ylabel("sqrt(L_ood) = ||w - w*||")
    ax.set_title("OOD error vs feature quality (fixture F)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "ood_vs_eps")


def fig_loss_trajectories(out_dir, *, seed: int = 0, theta: float = 0.05, sigma: float = 1.0) -> list[Path]:
    """L_id(t) and L_ood(t) along FT and LP-FT gradient flow, with LP's L_ood and the FT bound^2 as lines:
    early stopping of FT never gets near LP's OOD error (Thm 3.1 sub. holds for every t)."""
    P, v0, eps, U = _F(seed, theta, sigma)
    times = np.concatenate([[0.0], np.logspace(-3, 2, 150)])
    ft = fine_tune_trajectory(P.X, P.Y, v0, P.B0, times=times)
    lpft = lp_ft_trajectory(P.X, P.Y, P.B0, times=times)
    L_lp = ood_loss(P.B0.T @ linear_probe(P.X, P.Y, P.B0), P.w_star)
    bound = _bound(P, v0, eps, U)
    floor = 1e-16  # round-off level of the interpolating limit
    fig, (a1, a2) = _new_figure(2)
    for tr, name, color in ((ft, "FT", "tab:red"), (lpft, "LP-FT", "tab:green")):
        a1.loglog(times[1:], np.maximum(id_loss(tr.w, P.w_star, P.Q_S), floor)[1:], color=color, label=name)
        a2.loglog(times[1:], ood_loss(tr.w, P.w_star)[1:], color=color, label=name)
    a1.axhline(id_loss(P.B0.T @ linear_probe(P.X, P.Y, P.B0), P.w_star, P.Q_S), color="tab:blue", ls="--", label="LP")
    a2.axhline(L_lp, color="tab:blue", ls="--", label="LP")
    if bound > 0:
        a2.axhline(bound**2, color="tab:red", ls=":", label="FT lower bound^2 (Thm 3.1)")
    a1.set_title("ID loss L_id(t)", fontsize=9)
    a2.set_title(f"OOD loss L_ood(t) (theta={theta}, sigma={sigma})", fontsize=9)
    for a in (a1, a2):
        a.set_xlabel("t (gradient flow)")
        a.legend(fontsize=7)
    return _save(fig, out_dir, "loss_trajectories")


def fig_feature_change(out_dir, *, seed: int = 0, theta: float = 0.05, sigma: float = 1.0) -> list[Path]:
    """||Delta B Q_S||_F vs ||Delta B Q_perp||_F over t for FT and LP-FT (docs/theory.md §2.1: the second is 0)."""
    P, v0, _, _ = _F(seed, theta, sigma)
    times = np.concatenate([[0.0], np.logspace(-3, 2, 120)])
    fig, (ax,) = _new_figure(1, 5.4, 4.0)
    floor = 1e-18
    from .features import feature_change

    for tr, name, color in ((fine_tune_trajectory(P.X, P.Y, v0, P.B0, times=times), "FT", "tab:red"),
                            (lp_ft_trajectory(P.X, P.Y, P.B0, times=times), "LP-FT", "tab:green")):
        in_S, out_S = feature_change(tr.B, P.B0, P.Q_S, P.Q_perp)
        ax.loglog(times[1:], np.maximum(in_S[1:], floor), color=color, label=f"{name}: ||dB Q_S||_F (ID)")
        ax.loglog(times[1:], np.maximum(out_S[1:], floor), color=color, ls=":",
                  label=f"{name}: ||dB Q_perp||_F (OOD, = 0 up to round-off)")
    ax.set_xlabel("t")
    ax.set_ylabel("feature change")
    ax.set_title("Features change only on the span of the training inputs", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "feature_change")


def fig_wise_curves(out_dir, *, seed: int = 0, theta: float = 0.1, sigma: float = 1.0, a_S: float = 0.5,
                    a_perp: float = 1.5) -> list[Path]:
    """WiSE-FT: parametric (L_id(alpha), L_ood(alpha)) for weight-space vs output-space ensembles (docs/theory.md
    §2.9), theta0 = LP, theta1 in {FT, LP-FT}; Sigma_ood = a_S P_S + a_perp P_perp."""
    P, v0, _, _ = _F(seed, theta, sigma)
    th0 = (linear_probe(P.X, P.Y, P.B0), P.B0)
    ends = {"FT": fine_tune(P.X, P.Y, v0, P.B0, T=100.0), "LP-FT": lp_ft(P.X, P.Y, P.B0, T=100.0)}
    S_ood = ood_covariance(P.Q_S, P.Q_perp, a_S, a_perp)
    alphas = np.linspace(0, 1, 41)
    fig, axes = _new_figure(2)
    for ax, (name, th1) in zip(axes, ends.items()):
        cur = wise_curves(th0, th1, P.w_star, P.Q_S, S_ood, alphas)
        ax.plot(cur["id_wse"], cur["ood_wse"], "-", color="tab:purple", label="weight space (WiSE-FT)")
        ax.plot(cur["id_ose"], cur["ood_ose"], "--", color="tab:gray", label="output space (ensemble)")
        ax.plot(cur["id_wse"][0], cur["ood_wse"][0], "o", color="tab:blue")
        ax.annotate("LP (alpha=0)", (cur["id_wse"][0], cur["ood_wse"][0]), fontsize=7)
        ax.plot(cur["id_wse"][-1], cur["ood_wse"][-1], "s", color="tab:red")
        ax.annotate(f"{name} (alpha=1)", (cur["id_wse"][-1], cur["ood_wse"][-1]), fontsize=7)
        ax.set_xlabel("L_id(alpha)")
        ax.set_ylabel(f"L_ood(alpha), Sigma = {a_S:g} P_S + {a_perp:g} P_perp")
        ax.set_title(f"theta1 = {name} (theta={theta})", fontsize=9)
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=7)
    return _save(fig, out_dir, "wise_curves")


def fig_gd_drift(out_dir, *, seed: int = 0, theta: float = 0.05, sigma: float = 1.0, T: float = 50.0,
                 etas=(0.04, 0.02, 0.01, 0.005)) -> list[Path]:
    """Drift ||D_K - D_0||_F of the conserved quantity D = v v^T - B B^T under GD to horizon T vs step size:
    slope 1 on log-log (docs/theory.md §2.2: D_{t+1} - D_t = eta^2 (g_v g_v^T - g_B g_B^T))."""
    P, v0, _, _ = _F(seed, theta, sigma)
    D0 = conserved_quantity(v0, P.B0)
    drift = []
    for eta in etas:
        v, B = fine_tune(P.X, P.Y, v0, P.B0, lr=eta, steps=int(round(T / eta)))
        drift.append(np.linalg.norm(conserved_quantity(v, B) - D0))
    etas = np.asarray(etas, dtype=float)
    drift = np.array(drift)
    slope = np.polyfit(np.log(etas), np.log(drift), 1)[0]
    fig, (ax,) = _new_figure(1, 5.0, 3.8)
    ax.loglog(etas, drift, "o-", label=f"GD drift (fitted slope {slope:.2f})")
    ax.loglog(etas, drift[-1] * etas / etas[-1], "k:", label="slope 1")
    ax.set_xlabel("step size eta")
    ax.set_ylabel(f"||D_K - D_0||_F at T = {T:g}")
    ax.set_title("Conserved quantity: GD drift is O(eta); gradient flow conserves it", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "gd_drift")


FIGURES = {
    "fig2_toy": fig2_toy,
    "ood_vs_eps": fig_ood_vs_eps,
    "loss_trajectories": fig_loss_trajectories,
    "feature_change": fig_feature_change,
    "wise_curves": fig_wise_curves,
    "gd_drift": fig_gd_drift,
}


def make_all_figures(out_dir) -> dict[str, list[Path]]:
    """Draw every figure into ``out_dir``; returns ``{name: [png_path, pdf_path]}``."""
    return {name: fn(out_dir) for name, fn in FIGURES.items()}
