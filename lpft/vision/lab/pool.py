"""The unlabelled pretraining pool: handwritten ``id_train`` digits plus fresh typeset renders.

The pool stands to the lab what ImageNet stands to MoCo in the BREEDS experiments (docs/lab.md): unlabelled
images that cover, more or less, the kinds of images the downstream task and its shift will show. Two sources:

* the handwritten ``id_train`` images of the ``digits`` benchmark, labels dropped (never ``id_val`` or
  ``id_test``);
* typeset digits rendered from the same fonts and through the same pipeline as the ``typeset`` OOD split, but
  from another random stream (:func:`lpft.vision.data.digits.render_typeset` with ``stream >= 1``), so no
  evaluated image is in the pool, while its fonts are.

Each batch item is typeset with probability ``typeset_share`` (the pool-composition knob), else handwritten,
and is drawn uniformly within its source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lpft.vision.lab.model import values_to_inputs

__all__ = ["Pool", "build_pool"]


@dataclass
class Pool:
    """The two sources as backbone inputs ``[N, 1, 8, 8]`` (values in [0, 1])."""

    handwritten: torch.Tensor
    typeset: torch.Tensor
    typeset_share: float

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images, each typeset with probability ``typeset_share``, uniform within its source."""
        from_typeset = torch.rand(n, generator=generator) < self.typeset_share
        hi = torch.randint(0, len(self.handwritten), (n,), generator=generator)
        if len(self.typeset) == 0:
            return self.handwritten[hi]
        ti = torch.randint(0, len(self.typeset), (n,), generator=generator)
        return torch.where(from_typeset[:, None, None, None], self.typeset[ti], self.handwritten[hi])

    def describe(self) -> dict:
        return {"handwritten": int(len(self.handwritten)), "typeset": int(len(self.typeset)),
                "typeset_share": float(self.typeset_share)}


def build_pool(typeset_share: float, typeset_variants: int, stream: int) -> Pool:
    """The pool of a pretraining config.

    Args:
        typeset_share: probability that a batch item is typeset, in [0, 1].
        typeset_variants: renders per (font, digit) in the pool (ignored when ``typeset_share`` is 0).
        stream: the typeset render stream (>= 1: stream 0 is the evaluated ``typeset`` split).

    Returns:
        A :class:`Pool`.

    Raises:
        ValueError: a share outside [0, 1], fewer than one variant, or stream 0.
    """
    from lpft.vision.data.digits import digits_arrays, render_typeset

    if not 0.0 <= typeset_share <= 1.0:
        raise ValueError(f"typeset_share must lie in [0, 1], got {typeset_share!r}")
    if int(stream) != stream or stream < 1:
        raise ValueError(f"the pool's typeset stream must be an integer >= 1 (stream 0 renders the evaluated "
                         f"typeset split itself), got {stream!r}")
    hand_x, _ = digits_arrays("id_train")
    if typeset_share > 0:
        if int(typeset_variants) != typeset_variants or typeset_variants < 1:
            raise ValueError(f"typeset_variants must be a positive integer, got {typeset_variants!r}")
        type_x, _, _ = render_typeset(int(typeset_variants), int(stream))
    else:
        type_x = np.zeros((0, 64))
    return Pool(values_to_inputs(hand_x), values_to_inputs(type_x) if len(type_x) else torch.zeros(0, 1, 8, 8),
                float(typeset_share))
