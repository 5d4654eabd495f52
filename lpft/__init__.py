"""lpft: robust fine-tuning of pretrained models (LP, FT, LP-FT, WiSE-FT).

Subpackages:

* :mod:`lpft.synthetic` -- the theory of Kumar et al. (2022) for two-layer linear networks as executable
  math (numpy + scipy only; importing it never imports torch).
* :mod:`lpft.vision` -- the methods on real backbones (CLIP via open_clip, torchvision ResNets, timm
  EfficientNet-Lite) over the papers' shift benchmarks.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
