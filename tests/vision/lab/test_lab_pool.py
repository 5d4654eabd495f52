"""The pretraining pool (lpft/vision/lab/pool.py) and the typeset render streams (lpft/vision/data/digits.py)."""

import numpy as np
import pytest
import torch

from lpft.vision.data.digits import TYPESET_VARIANTS, digits_arrays, render_typeset
from lpft.vision.lab.model import values_to_inputs
from lpft.vision.lab.pool import build_pool


def test_stream_zero_is_the_typeset_split_and_stream_one_is_fresh():
    X, y = digits_arrays("typeset")
    X0, y0, fonts = render_typeset(TYPESET_VARIANTS, 0)
    assert np.array_equal(X0, X) and np.array_equal(y0, y)
    X1, y1, fonts1 = render_typeset(2, 1)
    assert fonts1 == fonts and len(X1) == 2 * 10 * len(fonts)
    assert np.array_equal(np.bincount(y1), [2 * len(fonts)] * 10)
    # other rotations and thickenings: most renders differ from the split's first two variants of the glyph
    first_two = X0.reshape(len(fonts), 10, TYPESET_VARIANTS, 64)[:, :, :2].reshape(-1, 64)
    assert (np.abs(X1 - first_two).sum(axis=1) > 0).mean() > 0.9
    with pytest.raises(ValueError, match="stream"):
        render_typeset(1, -1)
    with pytest.raises(ValueError, match="variants"):
        render_typeset(0, 1)


def test_pool_sources_and_share():
    pool = build_pool(0.5, 1, 1)
    hand, _ = digits_arrays("id_train")
    assert torch.equal(pool.handwritten, values_to_inputs(hand))
    assert pool.describe() == {"handwritten": len(hand), "typeset": len(pool.typeset), "typeset_share": 0.5}
    g = torch.Generator().manual_seed(0)
    x = pool.sample(2000, g)
    typeset = {tuple(v.flatten().tolist()) for v in pool.typeset}
    frac = np.mean([tuple(v.flatten().tolist()) in typeset for v in x])
    assert 0.4 < frac < 0.6
    a, b = (pool.sample(50, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)


def test_share_zero_needs_no_renders_and_bad_requests_fail():
    pool = build_pool(0.0, 5, 1)
    assert len(pool.typeset) == 0 and pool.sample(7, torch.Generator()).shape == (7, 1, 8, 8)
    with pytest.raises(ValueError, match="stream"):
        build_pool(0.2, 1, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_pool(1.5, 1, 1)
