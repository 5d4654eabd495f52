"""Calibration under shift: expected calibration error and negative log-likelihood of a classifier's logits.

ECE (Guo et al. 2017; Naeini et al. 2015) with ``n_bins`` equal-width bins of the top-1 confidence:
``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``, bin ``b`` holding confidences in ``(b / n_bins, (b + 1) /
n_bins]`` (a confidence of exactly 0 cannot occur for a softmax). NLL is the mean ``-log softmax(logits)[y]``.
Both are computed from the logits after the dataset's projection (class masks, ObjectNet pooling), as
accuracy is, in float64.
"""

from __future__ import annotations

import torch

__all__ = ["expected_calibration_error", "negative_log_likelihood", "calibration_metrics"]


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits [N, K] and labels [N]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("calibration metrics need at least one example")


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Top-1 ECE with ``n_bins`` equal-width confidence bins (see the module docstring)."""
    _check(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    # bin b holds (b / n_bins, (b + 1) / n_bins]
    bins = (torch.ceil(conf * n_bins) - 1).clamp(0, n_bins - 1).long()
    n = float(len(labels))
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += float(sel.sum()) / n * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return ece


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of the true labels (``inf`` if a true class has probability 0, e.g. masked)."""
    _check(logits, labels)
    return float(torch.nn.functional.cross_entropy(logits.double(), labels, reduction="mean"))


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """``{"ece": ..., "nll": ...}`` of projected logits."""
    return {"ece": expected_calibration_error(logits, labels, n_bins),
            "nll": negative_log_likelihood(logits, labels)}
