"""The offline lab: LP vs FT vs LP-FT vs WiSE-FT on the ``digits`` shift with a self-supervised backbone.

* :mod:`.model`: :class:`~.model.LabResNet`, a 120k-parameter ResNet with GroupNorm on the raw 8x8 values;
* :mod:`.pool`, :mod:`.augment`, :mod:`.pretrain`: SimCLR on an unlabelled pool (handwritten ``id_train`` plus
  fresh typeset renders), deterministic on CPU and cached by its config hash;
* :mod:`.backbone`: the registered backbone ``digits_simclr`` (``--pretrained`` names the pretraining setting);
* ``python -m lpft.vision.lab``: the knob sweep (pretraining budget and pool composition) x methods x seeds
  through the package's sweep, then the table and the figures (:mod:`.sweep`, :mod:`.report`).

docs/lab.md explains the design and how the knob maps to the theory's eps. Importing this package is light;
``lpft.vision.backbones`` imports :mod:`.backbone` to register the backbone.
"""
