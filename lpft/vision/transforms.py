"""Image transforms of a run: the benchmark's official LP-FT recipe, or the backbone's own preprocessing.

:func:`build_transforms` is the one place that decides what a training and an evaluation image go through.

* ``transforms="benchmark"`` follows the dataset configs of the official LP-FT code (Kumar et al. 2022,
  ``AnanyaKumar/transfer_learning``, ``configs/adaptation/datasets_*.yaml``): CIFAR-10 without crop or flip,
  FMoW at its native 224 px without any augmentation, DomainNet squashed to a square, BREEDS with
  RandomResizedCrop + flip and Resize 256 / CenterCrop 224, ImageNet with CLIP as ``datasets_imagenet.yaml``.
  Normalisation: a ResNet takes the dataset config's own constants (e.g. BREEDS' std 0.228, FMoW's train
  std 0.2289), a CLIP model CLIP's constants, any other family its own. Benchmarks without an official config
  (``digits``, user benchmarks) fall back to the backbone's transforms.
* ``transforms="backbone"`` returns the backbone's own ``train_transform`` / ``eval_transform`` (CLIP's
  preprocessing under the WiSE-FT protocol and for zero-shot).

Every recipe with its file:line is listed in ``docs/protocols.md``. Every transform starts with
:class:`~lpft.vision.backbones.ToRGB` and pickles (DataLoader workers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.transforms import ToRGB

__all__ = ["OFFICIAL_SIZE", "RequireSize", "TransformSpec", "build_transforms", "official_recipe_benchmarks"]

#: side of the official recipes (the 256 of "Resize 256 / CenterCrop 224" scales with it)
OFFICIAL_SIZE = 224
_REPO = "AnanyaKumar/transfer_learning"
_CFG = f"{_REPO} configs/adaptation/"
_CLIP_NORM_SRC = f"{_REPO} unlabeled_extrapolation/models/clip_model.py:18-20, 197-198"
# Normalisation constants exactly as the dataset configs write them.
_IN_MEAN = (0.485, 0.456, 0.406)
_CFG_STD = (0.228, 0.224, 0.225)  # BREEDS / CIFAR configs: 0.228, not torchvision's 0.229
_FMOW_TRAIN_STD = (0.2289, 0.224, 0.225)  # datasets_fmow.yaml:19
_FMOW_TEST_STD = (0.229, 0.224, 0.225)  # datasets_fmow.yaml:27
_BICUBIC = InterpolationMode.BICUBIC
_BACKBONE_ATTRS = ("family", "norm_mean", "norm_std", "interpolation", "image_size", "train_transform",
                   "eval_transform")


@dataclass(frozen=True)
class TransformSpec:
    """The resolved transforms of a run.

    Attributes:
        train: PIL image (any mode) -> float tensor ``[3, S, S]`` for ``id_train`` (training and LP features).
        eval: the same for every evaluated split.
        source: where the recipe comes from (official config path:line, or the backbone).
        notes: choices and deviations, in words (normalisation, resolution, variants).
    """

    train: Callable
    eval: Callable
    source: str
    notes: str


class RequireSize:
    """Pass a PIL image through unchanged if it is ``size`` x ``size``; otherwise raise ``ValueError``.

    FMoW's official recipe has no resize at all (WILDS images are 224 px); an image of another size would only
    fail later, in the batch collation, with an unhelpful message.
    """

    def __init__(self, size: int, what: str = "image"):
        self.size = int(size)
        self.what = what

    def __call__(self, img):
        if tuple(img.size) != (self.size, self.size):
            raise ValueError(f"{self.what}: expected a {self.size}x{self.size} image (the official recipe does not "
                             f"resize), got {img.size[0]}x{img.size[1]}; pass image_size to resize explicitly")
        return img

    def __repr__(self) -> str:
        return f"RequireSize({self.size})"


@dataclass
class _Recipe:
    """One benchmark's official geometry at side ``S`` (before ToTensor / Normalize)."""

    train: list
    eval: list
    augmented: bool  # whether ``train`` is random
    #: ``((train_mean, train_std), (eval_mean, eval_std))`` written in the dataset config, None if it has none
    norm: tuple | None
    source: str
    notes: list[str] = field(default_factory=list)


def official_recipe_benchmarks() -> tuple[str, ...]:
    """Benchmarks with an official LP-FT dataset config (the others use the backbone's transforms)."""
    return ("living17", "entity30", "cifar10", "domainnet", "fmow", "imagenet")


def _scaled(n: int, size: int) -> int:
    """Official side ``n`` (224, 256) at output side ``size``: 224 -> size, 256 -> round(size * 256 / 224)."""
    return size if n == OFFICIAL_SIZE else int(round(size * n / OFFICIAL_SIZE))


def _recipe(benchmark: str, family: str, size: int) -> _Recipe:
    resize = _scaled(256, size)
    clip = family == "clip"
    if benchmark in ("living17", "entity30"):
        cfg = f"datasets_{benchmark}.yaml"
        if not clip:
            src = f"{_CFG}{cfg}:13-22 (train), :24-35 (eval)"
        elif benchmark == "living17":
            src = f"{_CFG}datasets_living17_nonorm.yaml:13-18 (train), :20-27 (eval)"
        else:  # the release has no entity30 *_nonorm config; living17's shows the pattern
            src = (f"{_CFG}{cfg}:13-18 (train), :24-31 (eval), without its Normalize as in "
                   f"datasets_living17_nonorm.yaml:13-27 (there is no datasets_entity30_nonorm.yaml)")
        return _Recipe(
            train=[T.RandomResizedCrop(size), T.RandomHorizontalFlip()],
            eval=[T.Resize(resize), T.CenterCrop(size)],
            augmented=True, norm=((_IN_MEAN, _CFG_STD),) * 2, source=src,
        )
    if benchmark == "cifar10":
        if clip:
            src = f"{_CFG}datasets_cifar_stl_nonorm.yaml:11-15 (train), :17-21 (eval)"
        else:
            src = f"{_CFG}datasets_cifar_stl.yaml:11-19 (train), :21-29 (eval)"
        src += f"; CIFAR-10.1: {_REPO}@80f3d4a scripts/get_logits_for_ensembling.ipynb cell 8"
        return _Recipe(
            train=[T.Resize(size)], eval=[T.Resize((size, size))], augmented=False,
            norm=((_IN_MEAN, _CFG_STD),) * 2, source=src,
            notes=["CIFAR-10: no crop and no flip in training (Resize only); every eval split (CIFAR-10 test, "
                   "STL-10, CIFAR-10.1) is squashed whole to a square, nothing is cropped"],
        )
    if benchmark == "domainnet":
        return _Recipe(
            train=[T.Resize((resize, resize), interpolation=_BICUBIC), T.RandomCrop(size),
                   T.RandomHorizontalFlip()],
            eval=[T.Resize((size, size), interpolation=_BICUBIC)],
            augmented=True, norm=None, source=f"{_CFG}datasets_domainnet.yaml:15-24 (train), :26-31 (eval)",
            notes=["DomainNet: both sides squashed to a square (aspect ratio not kept), as in the SENTRY-derived "
                   "official config"],
        )
    if benchmark == "fmow":
        if size == OFFICIAL_SIZE:
            geometry = [RequireSize(size, "fmow (WILDS images are 224x224)")]
        else:
            geometry = [T.Resize((size, size))]
        return _Recipe(
            train=list(geometry), eval=list(geometry), augmented=False,
            norm=((_IN_MEAN, _FMOW_TRAIN_STD), (_IN_MEAN, _FMOW_TEST_STD)),
            source=f"{_CFG}datasets_fmow.yaml:14-19 (train), :22-27 (eval)",
            notes=["FMoW: native 224 px, no resize, crop or augmentation in training or evaluation; the config's "
                   "train std (0.2289, ...) and test std (0.229, ...) differ and are kept as written"],
        )
    if benchmark == "imagenet":
        if clip:
            return _Recipe(
                train=[T.Resize(size, interpolation=_BICUBIC), T.CenterCrop(size)],
                eval=[T.Resize(size, interpolation=_BICUBIC), T.CenterCrop(size)],
                augmented=False, norm=None, source=f"{_CFG}datasets_imagenet.yaml:12-20 (train), :22-30 (eval)",
                notes=["ImageNet with CLIP: the datasets_imagenet.yaml variant (Resize 224 bicubic + CenterCrop 224, "
                       "no augmentation, train and eval) is used. The release also has datasets_imagenet_augs.yaml "
                       "(RandomResizedCrop + flip; eval Resize 256); which variant produced the paper's ImageNet "
                       "numbers could not be found (docs/protocols.md)"],
            )
        return _Recipe(
            train=[T.RandomResizedCrop(size), T.RandomHorizontalFlip()],
            eval=[T.Resize(resize, interpolation=_BICUBIC), T.CenterCrop(size)],
            augmented=True, norm=None, source=f"{_CFG}datasets_imagenet_augs.yaml:12-17 (train), :19-27 (eval)",
            notes=["ImageNet with a non-CLIP backbone: the release's augmented ImageNet recipe "
                   "(datasets_imagenet_augs.yaml); the paper ran ImageNet with CLIP only"],
        )
    raise ValueError(f"no official recipe for benchmark {benchmark!r}")  # pragma: no cover - callers check


def _normalisation(recipe: _Recipe, backbone, benchmark: str) -> tuple[tuple, tuple, str]:
    """``((train_mean, train_std), (eval_mean, eval_std), note)`` for ``backbone`` on ``recipe``."""
    own = (tuple(backbone.norm_mean), tuple(backbone.norm_std))
    if backbone.family == "clip":
        return own, own, (
            f"normalisation: CLIP's constants {_fmt(own)}. The official code feeds [0, 1] images and normalises "
            f"inside the model just before encode_image ({_CLIP_NORM_SRC}); normalising as the last transform "
            f"step is the same computation")
    if backbone.family == "resnet" and recipe.norm is not None:
        tr, ev = recipe.norm
        which = _fmt(ev) if tr == ev else f"train {_fmt(tr)}; eval {_fmt(ev)}"
        return tr, ev, f"normalisation: the dataset config's own constants ({which})"
    why = ("the config's constants belong to its ResNet-50 runs" if recipe.norm is not None else
           f"the {benchmark} config has no Normalize (its runs normalise inside the CLIP model)")
    return own, own, f"normalisation: the {backbone.family} backbone's own constants {_fmt(own)} ({why})"


def _fmt(mean_std: tuple) -> str:
    mean, std = mean_std
    return f"mean={tuple(mean)}, std={tuple(std)}"


def _check_backbone(backbone) -> None:
    missing = [a for a in _BACKBONE_ATTRS if not hasattr(backbone, a)]
    if missing:
        raise ValueError(f"build_transforms needs a backbone with {', '.join(_BACKBONE_ATTRS)} "
                         f"(lpft.vision.backbones.Backbone); {type(backbone).__name__} lacks {', '.join(missing)}")


def _backbone_spec(backbone, *, augment: bool, image_size: int | None, why: str) -> TransformSpec:
    if image_size is not None and int(image_size) != int(backbone.image_size):
        raise ValueError(f"image_size={image_size} but backbone {getattr(backbone, 'name', '?')!r} was built for "
                         f"{backbone.image_size} px; build the backbone with the same image_size")
    name = getattr(backbone, "name", type(backbone).__name__)
    if backbone.family == "clip":
        source = (f"backbone {name}: CLIP's own preprocessing as WiSE-FT uses it (mlfoundations/wise-ft "
                  f"clip/clip.py:64-80: RandomResizedCrop scale 0.9-1 bicubic, no flip; Resize + CenterCrop)")
    else:
        source = f"backbone {name}: its default transforms (lpft.vision.backbones, family {backbone.family})"
    notes = [why]
    train = backbone.train_transform
    if not augment:
        train = backbone.eval_transform
        notes.append("augment=False: the train transform is the eval transform")
    return TransformSpec(train=train, eval=backbone.eval_transform, source=source, notes="; ".join(notes))


def build_transforms(
    benchmark: str,
    backbone,
    *,
    protocol: str | None,
    transforms: str,
    augment: bool = True,
    image_size: int | None = None,
) -> TransformSpec:
    """The train and eval transforms of ``benchmark`` on ``backbone``.

    Args:
        benchmark: benchmark name (``lpft.vision.data.list_benchmarks()``).
        backbone: a :class:`lpft.vision.backbones.Backbone`, or any object with ``family``, ``norm_mean``,
            ``norm_std``, ``interpolation``, ``image_size``, ``train_transform``, ``eval_transform``.
        protocol: the run's protocol (``"lpft"``, ``"wiseft"`` or None); recorded in ``notes`` only, the recipe is
            chosen by ``transforms``.
        transforms: ``"benchmark"`` (the official LP-FT dataset config; the backbone's transforms for a
            benchmark without one) or ``"backbone"`` (the backbone's own preprocessing).
        augment: False makes the train transform deterministic (the eval transform, where the recipe augments).
        image_size: output side; None means the backbone's ``image_size`` (224 for every pretrained backbone).
            A side other than 224 scales the official geometry (224 -> S, 256 -> round(S * 256 / 224); FMoW
            gets ``Resize((S, S))``), which is recorded in ``notes`` as a deviation.

    Returns:
        A :class:`TransformSpec` with picklable ``train`` / ``eval`` transforms starting with ``ToRGB``.

    Raises:
        ValueError: unknown ``transforms`` or ``protocol``, a bad ``image_size``, a backbone object without the
            attributes above, or (``"backbone"`` transforms) an ``image_size`` the backbone was not built for.
    """
    if transforms not in ("benchmark", "backbone"):
        raise ValueError(f"transforms must be 'benchmark' or 'backbone'; got {transforms!r}")
    if protocol not in (None, "lpft", "wiseft"):
        raise ValueError(f"protocol must be 'lpft', 'wiseft' or None; got {protocol!r}")
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) != image_size or image_size < 8):
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    _check_backbone(backbone)
    if transforms == "backbone":
        why = ("transforms='backbone': the backbone's own preprocessing"
               + (" (the WiSE-FT protocol)" if protocol == "wiseft" else ""))
        return _backbone_spec(backbone, augment=augment, image_size=image_size, why=why)
    if benchmark not in official_recipe_benchmarks():
        why = (f"benchmark {benchmark!r} has no official LP-FT dataset config; the backbone's own preprocessing "
               f"is used")
        return _backbone_spec(backbone, augment=augment, image_size=image_size, why=why)

    size = int(backbone.image_size if image_size is None else image_size)
    recipe = _recipe(benchmark, backbone.family, size)
    (tr_mean, tr_std), (ev_mean, ev_std), norm_note = _normalisation(recipe, backbone, benchmark)
    eval_tf = T.Compose([ToRGB(), *recipe.eval, T.ToTensor(), T.Normalize(ev_mean, ev_std)])
    notes = list(recipe.notes) + [norm_note]
    if augment or not recipe.augmented:
        train_tf = T.Compose([ToRGB(), *recipe.train, T.ToTensor(), T.Normalize(tr_mean, tr_std)])
        if not augment:
            notes.append("augment=False: the official train transform is already deterministic")
    else:
        train_tf = eval_tf
        notes.append("augment=False: the train transform is the eval transform (no random crop or flip)")
    if size != OFFICIAL_SIZE:
        notes.append(f"deviation: image_size {size} instead of {OFFICIAL_SIZE}: the official geometry is scaled "
                     f"(224 -> {size}, 256 -> {_scaled(256, size)})"
                     + (f"; FMoW images are resized to {size}x{size}" if benchmark == "fmow" else ""))
    if protocol == "wiseft":
        notes.append("protocol 'wiseft' with transforms='benchmark': the LP-FT dataset recipe is used "
                     "(WiSE-FT itself uses CLIP's preprocessing, transforms='backbone')")
    return TransformSpec(train=train_tf, eval=eval_tf, source=recipe.source, notes="; ".join(notes))
