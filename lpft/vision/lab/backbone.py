"""The registered backbone ``digits_simclr``: the lab's small ResNet, SimCLR-pretrained on the digits pool.

``create_backbone("digits_simclr", pretrained=TAG)`` (``--pretrained TAG`` on the command line) names the
pretraining setting; the network comes from :func:`lpft.vision.lab.pretrain.pretrain` (cache, shipped weights, or
trained on first use, about a minute on 2 idle cores for the default). Tags:

* ``s<steps>[-p<share>][-b<batch>][-v<variants>][-seed<n>]``: SimCLR for ``steps`` steps (0: the random
  initialisation), typeset share ``share`` of the pool (default 0.2), batch ``batch`` (default 256), ``variants``
  typeset renders per font and digit in the pool (default 20). Without ``-seed<n>`` the pretraining seed is the
  global torch seed when the backbone is built (``torch.initial_seed()``), which the runner sets to the run's
  ``--seed``: every seed of a sweep then re-runs pretraining too, like the random-init backbones.
* ``none`` / ``random``: a random initialisation from the global torch RNG (as every backbone's ``none``).
* no tag: :data:`DEFAULT_TAG`.

Inputs are the 8x8 digit values: the transforms shrink the ``digits`` items (32x32, nearest-upsampled) back to
8x8 with a box filter, and the normalisation is the identity, so the backbone sees ``values / 16`` exactly as in
pretraining. Training and evaluation transforms are the same (no augmentation downstream). ``weights_id`` is
``simclr:<tag>:seed<s>:<config key>:<state digest>``.
"""

from __future__ import annotations

import re
import sys

import torch
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.base import Backbone, register_backbone
from lpft.vision.backbones.transforms import make_transforms
from lpft.vision.backbones.weights import file_id, is_random_tag, load_file, load_strict, random_id, strip_prefix
from lpft.vision.lab.model import LabResNet

__all__ = ["DEFAULT_TAG", "IMAGE_SIZE", "LAB_FAMILY", "NAME", "canonical_tag", "config_from_tag", "parse_tag"]

NAME = "digits_simclr"
#: the setting the backbone is built with when no tag is given (the lab's good-features setting)
DEFAULT_TAG = "s2000-p0.2"
#: input side: the raw 8x8 digit values
IMAGE_SIZE = 8
#: the backbone family; "tiny" (small, self-contained models) until the registry has a family for lab models
LAB_FAMILY = "tiny"
#: identity normalisation: inputs are the values / 16 in [0, 1], as in pretraining
NORM_MEAN = (0.0, 0.0, 0.0)
NORM_STD = (1.0, 1.0, 1.0)
INTERPOLATION = InterpolationMode.BOX

_TAG = re.compile(r"^s(?P<steps>\d+)(?:-p(?P<share>\d*\.?\d+))?(?:-b(?P<batch>\d+))?(?:-v(?P<variants>\d+))?"
                  r"(?:-seed(?P<seed>\d+))?$")


def parse_tag(tag: str) -> tuple[dict, int | None]:
    """``(SimCLRConfig fields, pinned seed or None)`` of a pretraining tag (see the module docstring).

    Raises:
        ValueError: the tag does not follow the grammar, or its share lies outside [0, 1].
    """
    m = _TAG.match(str(tag).strip().lower())
    if m is None:
        raise ValueError(f"unknown pretrained tag {tag!r} for {NAME}; expected 's<steps>[-p<share>][-b<batch>]"
                         f"[-v<variants>][-seed<n>]' (e.g. {DEFAULT_TAG!r}, 's0' = random init) or 'none'")
    fields: dict = {"steps": int(m["steps"])}
    if m["share"] is not None:
        fields["typeset_share"] = float(m["share"])
        if not 0.0 <= fields["typeset_share"] <= 1.0:
            raise ValueError(f"pretrained tag {tag!r}: the typeset share must lie in [0, 1]")
    if m["batch"] is not None:
        fields["batch_size"] = int(m["batch"])
    if m["variants"] is not None:
        fields["typeset_variants"] = int(m["variants"])
    return fields, (None if m["seed"] is None else int(m["seed"]))


def config_from_tag(tag: str | None, seed: int):
    """The :class:`~lpft.vision.lab.pretrain.SimCLRConfig` of ``tag`` (None: :data:`DEFAULT_TAG`); ``seed`` is
    used unless the tag pins one."""
    from lpft.vision.lab.pretrain import SimCLRConfig

    fields, pinned = parse_tag(DEFAULT_TAG if tag is None else tag)
    return SimCLRConfig(seed=int(seed if pinned is None else pinned), **fields)


def canonical_tag(cfg) -> str:
    """The shortest tag naming ``cfg``'s knobs (``s0`` for any random initialisation; no seed)."""
    from lpft.vision.lab.pretrain import SimCLRConfig

    if cfg.steps == 0:
        return "s0"
    d = SimCLRConfig()
    out = f"s{cfg.steps}-p{cfg.typeset_share:g}"
    if cfg.batch_size != d.batch_size:
        out += f"-b{cfg.batch_size}"
    if cfg.typeset_variants != d.typeset_variants:
        out += f"-v{cfg.typeset_variants}"
    return out


def _pretrained_net(tag: str | None) -> tuple[LabResNet, str]:
    from lpft.vision.lab.pretrain import WEIGHTS_DIR, default_cache_dir, pretrain, state_digest

    seed = torch.initial_seed()
    if seed >= 2 ** 32:  # an unseeded process (torch draws a 64-bit seed): take the shipped seed, and say so
        print(f"[{NAME}] torch is not seeded (torch.manual_seed): using pretraining seed 0", file=sys.stderr)
        seed = 0
    cfg = config_from_tag(tag, seed)
    target = default_cache_dir() / cfg.filename
    if cfg.steps > 0 and not target.is_file() and not (WEIGHTS_DIR / cfg.filename).is_file():
        print(f"[{NAME}] first use of setting {canonical_tag(cfg)} with seed {cfg.seed} (config {cfg.key}): "
              f"pretraining it now; the checkpoint is cached in {target.parent}", file=sys.stderr)
    res = pretrain(cfg)
    wid = f"simclr:{canonical_tag(cfg)}:seed{cfg.seed}:{cfg.key}:{state_digest(res.net.state_dict())}"
    return res.net, wid


@register_backbone(NAME, LAB_FAMILY)
def _digits_simclr(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """The lab backbone (64-d features of :class:`~lpft.vision.lab.model.LabResNet`); see the module docstring."""
    if image_size is not None and int(image_size) != IMAGE_SIZE:
        raise ValueError(f"{NAME} reads the 8x8 digit values; image_size must be {IMAGE_SIZE} (or unset), "
                         f"got {image_size}")
    if weights is not None:
        net = LabResNet()
        load_strict(net, strip_prefix(load_file(weights), "module."), f"file {weights}")
        weights_id = file_id(weights)
    elif is_random_tag(pretrained):
        net = LabResNet()  # initialised from the global torch RNG, which the runner seeds
        weights_id = random_id(net, torch.initial_seed())
    else:
        net, weights_id = _pretrained_net(pretrained)
    train_tf, eval_tf = make_transforms(IMAGE_SIZE, mean=NORM_MEAN, std=NORM_STD, interpolation=INTERPOLATION,
                                        resize=IMAGE_SIZE, train_scale=None, flip=False, augment=augment)
    return Backbone(NAME, net, net.feature_dim, weights_id, family=LAB_FAMILY, image_size=IMAGE_SIZE,
                    norm_mean=NORM_MEAN, norm_std=NORM_STD, interpolation=INTERPOLATION, train_transform=train_tf,
                    eval_transform=eval_tf)
