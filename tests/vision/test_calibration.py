"""ECE and NLL against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lpft.vision.calibration import calibration_metrics, expected_calibration_error, negative_log_likelihood


def test_ece_equals_a_hand_computed_value():
    # two classes; confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.7 (correct)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]], dtype=torch.float64)
    logits = p.log()
    labels = torch.tensor([0, 1, 1, 1])
    # 15 bins of width 1/15: 0.9 -> bin 13 (0.8667, 0.9333]; 0.6 -> bin 8 (0.5333, 0.6]; 0.7 -> bin 10 (0.6667, 0.7333]
    want = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1.0 - 0.6) + 1 / 4 * abs(1.0 - 0.7)
    assert expected_calibration_error(logits, labels) == pytest.approx(want, abs=1e-12)
    # with 1 bin, ECE = |accuracy - mean confidence|
    assert expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(abs(0.75 - 0.775), abs=1e-12)


def test_nll_and_perfect_calibration():
    p = torch.tensor([[0.8, 0.2], [0.25, 0.75]])
    labels = torch.tensor([0, 0])
    assert negative_log_likelihood(p.log(), labels) == pytest.approx(-(math.log(0.8) + math.log(0.25)) / 2)
    # 10 examples at confidence 0.8, 8 of them correct: calibrated, ECE 0
    logits = torch.tensor([[0.8, 0.2]], dtype=torch.float64).log().repeat(10, 1)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert calibration_metrics(logits, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="expected logits"):
        expected_calibration_error(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), n_bins=0)
