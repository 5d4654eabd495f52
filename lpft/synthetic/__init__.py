"""The theory of LP-FT (Kumar et al. 2022) and WiSE-FT (Wortsman et al. 2022) in two-layer linear networks.

numpy + scipy only: importing this package never imports torch or matplotlib (:mod:`lpft.synthetic.figures`
imports matplotlib inside its functions).

Functional core (float64 arrays; ``X`` has one input per row):

* :func:`linear_probe` ``(X, Y, B0) -> v``: min-norm minimiser of ``||X B0^T v - Y||^2``.
* :func:`fine_tune` ``(X, Y, v0, B0, *, T | lr+steps) -> (v, B)``: gradient flow / descent on
  ``(1/n)||X B^T v - Y||^2``.
* :func:`lp_ft` ``(X, Y, B0, ...) -> (v, B)``: FT from ``(linear_probe(X, Y, B0), B0)``.
* :func:`wise_ft` ``(theta0, theta1, alpha) -> theta``: ``(1 - alpha) theta0 + alpha theta1``.

Around it: problem construction (:mod:`.data`), losses (:mod:`.model`), trajectories (:mod:`.dynamics`),
closed forms (:mod:`.closed_form`), feature-change measurements (:mod:`.features`) and WiSE-FT identities
(:mod:`.wise`). Theorem numbering (docs/theory.md §0): submission Thm 3.1 = arXiv Thm 3.2 (FT OOD lower bound).
"""

from .closed_form import (
    certificate_error_lower_bound,
    certificate_G,
    feature_distance,
    ft_limit_k1,
    ft_ood_lower_bound,
    gd_drift_increments,
    head_alignment_error,
    lp_gd_iterate,
    lp_id_loss,
    lp_limit,
    lp_limit_normal_equations,
    lp_ood_upper_bound,
    lp_trajectory,
    polar_factor,
    principal_cosines,
)
from .data import (
    Problem,
    complement_rows,
    draw_head,
    gaussian_design,
    make_problem,
    ood_covariance,
    orthonormal_rows,
    perturb_features,
    random_subspace,
    whitened_design,
)
from .dynamics import (
    GradientDescentDivergedError,
    Trajectory,
    fine_tune,
    fine_tune_trajectory,
    linear_probe,
    linear_probe_trajectory,
    lp_ft,
    lp_ft_trajectory,
    simulate,
)
from .features import (
    feature_change,
    feature_change_ratio,
    feature_velocity,
    output_velocity,
    output_velocity_split,
)
from .model import (
    conserved_quantity,
    effective_predictor,
    flow_rhs,
    gradients,
    id_loss,
    max_stable_lr,
    ood_loss,
    quadratic_loss,
    train_loss,
)
from .wise import (
    interpolation_q,
    linearised_output,
    ose_interior_minimum,
    ose_predictor,
    wise_curves,
    wise_ft,
    wse_loss_closed_form,
    wse_ose_gap_bound,
    wse_predictor,
)

__all__ = [
    # functional core
    "linear_probe", "fine_tune", "lp_ft", "wise_ft",
    # dynamics
    "Trajectory", "GradientDescentDivergedError", "simulate", "fine_tune_trajectory", "linear_probe_trajectory",
    "lp_ft_trajectory",
    # data
    "Problem", "make_problem", "random_subspace", "orthonormal_rows", "complement_rows", "perturb_features",
    "whitened_design", "gaussian_design", "draw_head", "ood_covariance",
    # model and losses
    "effective_predictor", "train_loss", "gradients", "flow_rhs", "quadratic_loss", "id_loss", "ood_loss",
    "conserved_quantity", "max_stable_lr",
    # closed forms
    "polar_factor", "feature_distance", "principal_cosines", "head_alignment_error", "ft_ood_lower_bound",
    "certificate_G", "certificate_error_lower_bound", "lp_limit", "lp_limit_normal_equations", "lp_trajectory",
    "lp_gd_iterate", "lp_ood_upper_bound", "lp_id_loss", "ft_limit_k1", "gd_drift_increments",
    # features
    "feature_change", "feature_change_ratio", "feature_velocity", "output_velocity", "output_velocity_split",
    # WiSE-FT
    "interpolation_q", "linearised_output", "wse_predictor", "ose_predictor", "wse_loss_closed_form",
    "wse_ose_gap_bound", "ose_interior_minimum", "wise_curves",
]
