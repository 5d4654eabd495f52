"""CLIP image towers via open_clip (Radford et al. 2021): ``clip_vit_b16``, ``clip_vit_b32``, ``clip_vit_l14``,
``clip_rn50``.

These are the backbones of WiSE-FT (Wortsman et al. 2022) and of LP-FT's ImageNet and DomainNet experiments
(Kumar et al. 2022). The trainable module is the image tower alone (``visual``); the whole open_clip model
(with the text tower, never trained) and the tokenizer ride along outside the module tree, for zero-shot
heads. So a :class:`~lpft.vision.backbones.Classifier` over a CLIP backbone has only parameters that get
gradients (what DistributedDataParallel without ``find_unused_parameters`` needs), its state dict holds no
text tower, and ``copy.deepcopy`` shares the text tower instead of copying it.

Features: the projected image embedding, L2-normalised when ``feature_norm`` is True (the default, as
WiSE-FT's ``ImageClassifier``), raw when False (as LP-FT, ``transfer_learning
unlabeled_extrapolation/models/clip_model.py:197-198``).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode

from lpft.vision.backbones.base import Backbone, check_images, register_backbone
from lpft.vision.backbones.transforms import CLIP_MEAN, CLIP_STD, make_transforms
from lpft.vision.backbones.weights import (
    WeightsMismatchError, file_id, is_random_tag, load_file, load_strict, not_found, random_id, strip_prefix,
)

__all__ = ["OPEN_CLIP_MIN_VERSION", "ClipBackbone", "build_clip", "check_open_clip_version"]

#: open_clip records QuickGELU in its pretrained configs (``get_pretrained_cfg(...)["quick_gelu"]``) from
#: v2.29.0 on (commit 84f7d2f); older versions would silently build OpenAI CLIP with nn.GELU.
OPEN_CLIP_MIN_VERSION = "2.29"


def _release(version: str) -> tuple[int, ...]:
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(version))
    if m is None:
        raise ValueError(f"cannot parse a version number from {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def check_open_clip_version(version: str | None = None, required: str = OPEN_CLIP_MIN_VERSION) -> str:
    """Check that open_clip is at least ``required``.

    Args:
        version: the version to check; default ``open_clip.__version__``.
        required: the minimum release.

    Returns:
        The checked version string.

    Raises:
        ImportError: the version is older than ``required`` (the message names both).
    """
    if version is None:
        import open_clip

        version = getattr(open_clip, "__version__", "0")
    have, need = _release(version), _release(required)
    width = max(len(have), len(need))
    if have + (0,) * (width - len(have)) < need + (0,) * (width - len(need)):
        raise ImportError(
            f"open_clip_torch {version} is installed, but the CLIP backbones need open_clip_torch>={required}: "
            f"older releases do not record QuickGELU in their pretrained configs, so OpenAI CLIP would be "
            f"built with the wrong activation. Upgrade with `pip install -U 'open_clip_torch>={required}'`."
        )
    return str(version)


class _TextSide:
    """Holds the whole open_clip model and its tokenizer outside the module tree.

    Not an ``nn.Module``: nothing in it appears in the owner's ``state_dict()``, ``parameters()`` or
    ``modules()``, ``.to()`` does not move it, and ``copy.deepcopy`` of the owner shares it (the text tower
    is never trained, so every copy can use the same one).
    """

    def __init__(self, model: nn.Module, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def __copy__(self) -> "_TextSide":
        return self

    def __deepcopy__(self, memo) -> "_TextSide":
        return self


def _text_children(model: nn.Module) -> list[nn.Module]:
    return [child for name, child in model.named_children() if name != "visual"]


def _move_text_side(model: nn.Module, device: torch.device) -> None:
    """Move everything of an open_clip model except its image tower to ``device``."""
    for child in _text_children(model):
        child.to(device)
    with torch.no_grad():
        for p in model.parameters(recurse=False):  # logit_scale, positional_embedding, text_projection
            p.data = p.data.to(device)
    for name, b in list(model.named_buffers(recurse=False)):  # attn_mask
        setattr(model, name, b.to(device))


class ClipBackbone(Backbone):
    """A CLIP image tower: ``normalize(visual(x))`` (or ``visual(x)`` with ``feature_norm=False``).

    Attributes:
        visual: the image tower, the only submodule (state-dict keys ``visual.*``).
        clip_model: the whole open_clip model the backbone was built from (image and text towers); not a
            submodule. Its ``visual`` is this backbone's tower for the backbone :func:`create_backbone`
            returns; a deep copy gets its own ``visual`` and shares ``clip_model`` with the original.
        tokenizer: open_clip tokenizer for the architecture (list of strings -> token tensor).
        logit_scale: ``exp`` of the model's learned log temperature, a float (100 for OpenAI CLIP).
        feature_norm: whether :meth:`forward` L2-normalises the embedding (bool, assignable).
        activation: ``"quickgelu"`` or ``"gelu"``, the tower's activation (also the end of ``weights_id``).
    """

    is_clip = True

    def __init__(self, name: str, clip_model: nn.Module, tokenizer, weights_id: str, *, activation: str,
                 **meta: Any):
        super().__init__(name, None, int(clip_model.visual.output_dim), weights_id, family="clip", **meta)
        self.visual = clip_model.visual
        self._text = _TextSide(clip_model, tokenizer)
        self.activation = activation
        self._feature_norm = True
        for child in _text_children(clip_model):  # the text side is only ever used for inference
            child.eval()

    @property
    def clip_model(self) -> nn.Module:
        return self._text.model

    @property
    def tokenizer(self):
        return self._text.tokenizer

    @property
    def logit_scale(self) -> float:
        return float(self.clip_model.logit_scale.detach().exp().item())

    @property
    def feature_norm(self) -> bool:
        return self._feature_norm

    @feature_norm.setter
    def feature_norm(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"feature_norm must be True or False, got {value!r}")
        self._feature_norm = value

    @property
    def features_id(self) -> str:
        return f"{self.weights_id}:{'l2norm' if self._feature_norm else 'raw'}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embedding ``[N, feature_dim]``, L2-normalised (once) if ``feature_norm``."""
        check_images(images, self.name)
        feats = self.visual(images)
        return F.normalize(feats, dim=-1) if self._feature_norm else feats

    def _device(self) -> torch.device:
        p = next(self.visual.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @contextmanager
    def text_tower(self, device: torch.device | str | None = None) -> Iterator[nn.Module]:
        """Context: the open_clip model with its text side on ``device`` and in eval mode.

        Only the text side moves (never the image tower, which may belong to another backbone); on exit it
        goes back to where it was and every module's training flag is restored.

        Args:
            device: default: the device of this backbone's image tower.

        Yields:
            ``clip_model``, ready for ``encode_text``.
        """
        model = self.clip_model
        dev = torch.device(device) if device is not None else self._device()
        home = model.logit_scale.device
        modes = [(m, m.training) for c in _text_children(model) for m in c.modules()]
        _move_text_side(model, dev)
        try:
            for c in _text_children(model):
                c.eval()
            yield model
        finally:
            _move_text_side(model, home)
            for m, mode in modes:
                m.training = mode

    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Tokenise and encode prompts; returns unnormalised text embeddings ``[len(texts), feature_dim]``
        on ``device`` (default: the image tower's device)."""
        with self.text_tower(device) as model:
            tokens = self.tokenizer(list(texts)).to(model.logit_scale.device)
            return model.encode_text(tokens)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_norm={self._feature_norm}"


def build_clip(
    key: str,
    arch: str,
    *,
    weights,
    pretrained: str | None,
    image_size: int | None,
    augment: bool,
    default_tag: str | None = "openai",
) -> ClipBackbone:
    """Build a :class:`ClipBackbone` for open_clip architecture ``arch`` (see ``create_backbone``).

    The activation follows the tag's ``quick_gelu`` entry; for a weights file or a random init, QuickGELU
    (the OpenAI architecture) unless a non-QuickGELU tag is named. ``weights_id`` ends in the activation.

    Raises:
        ImportError: open_clip older than :data:`OPEN_CLIP_MIN_VERSION`.
        ValueError / WeightsNotFoundError / WeightsMismatchError: as ``create_backbone``.
    """
    check_open_clip_version()
    import open_clip

    tag = default_tag if pretrained is None else pretrained
    random_init = tag is None or is_random_tag(tag)
    tag_cfg = {} if random_init else open_clip.get_pretrained_cfg(arch, tag)
    if not random_init and not tag_cfg and weights is None:
        raise ValueError(
            f"unknown pretrained tag {tag!r} for {key} ({arch}); open_clip knows: "
            f"{open_clip.list_pretrained_tags_by_model(arch)} (or 'none' for random init)"
        )
    # OpenAI weights were trained with QuickGELU; open_clip's plain configs use nn.GELU.
    quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else True
    activation = "quickgelu" if quick_gelu else "gelu"
    kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu}
    if image_size is not None:
        kwargs["force_image_size"] = int(image_size)

    if weights is not None:
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
        sd = strip_prefix(load_file(weights), "module.")
        # OpenAI's TorchScript archives carry a few attributes and non-persistent buffers as tensors.
        own_keys = set(model.state_dict())
        extra = {"input_resolution", "context_length", "vocab_size"}
        extra |= {n for n, _ in model.named_buffers() if n not in own_keys}
        for k in extra:
            sd.pop(k, None)
        if "logit_scale" in sd:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        from open_clip.model import resize_pos_embed

        resize_pos_embed(sd, model)
        load_strict(model, sd, f"file {weights}")
        weights_id = file_id(weights)
    elif random_init:
        seed = torch.initial_seed()
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
        weights_id = random_id(model, seed)
    else:
        model = _load_tag(open_clip, key, arch, tag, tag_cfg, kwargs)
        weights_id = str(tag)
    model.float()

    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list))
               else model.visual.image_size)
    mean = tuple(tag_cfg.get("mean", CLIP_MEAN)) if tag_cfg else CLIP_MEAN
    std = tuple(tag_cfg.get("std", CLIP_STD)) if tag_cfg else CLIP_STD
    interpolation = InterpolationMode(tag_cfg.get("interpolation", "bicubic")) if tag_cfg else InterpolationMode.BICUBIC
    # CLIP's recipe (WiSE-FT): RandomResizedCrop(scale 0.9-1) without flip; eval Resize(size) + CenterCrop.
    train_tf, eval_tf = make_transforms(
        size, mean=mean, std=std, interpolation=interpolation, resize=size,
        train_scale=(0.9, 1.0), flip=False, augment=augment,
    )
    return ClipBackbone(
        key, model, open_clip.get_tokenizer(arch), f"{weights_id}:{activation}", activation=activation,
        image_size=size, norm_mean=mean, norm_std=std, interpolation=interpolation,
        train_transform=train_tf, eval_transform=eval_tf,
    )


def _load_tag(open_clip, key: str, arch: str, tag: str, tag_cfg: dict, kwargs: dict) -> nn.Module:
    """Fetch (or find cached) and load open_clip's published weights ``arch/tag``."""
    from open_clip.pretrained import download_pretrained

    try:
        path = download_pretrained(tag_cfg)
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"download returned {path!r}")
    except Exception as e:  # noqa: BLE001 - library/network errors become one clear error
        from huggingface_hub import constants as hf_constants

        looked = [f"Hugging Face hub cache {hf_constants.HF_HUB_CACHE}"
                  f" (repo {tag_cfg.get('hf_hub', '?').rstrip('/')})"]
        if tag_cfg.get("url"):
            looked.append(f"{os.path.expanduser('~/.cache/clip')} (URL {tag_cfg['url']})")
        raise not_found(
            f"open_clip weights {arch}/{tag} for backbone {key}",
            looked,
            f"E.g. run `python -c \"import open_clip; open_clip.create_model('{arch}', "
            f"pretrained='{tag}')\"` online. Library error: {e}",
        ) from e
    try:
        return open_clip.create_model(arch, pretrained=path, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise WeightsMismatchError(f"open_clip weights {arch}/{tag} at {path} do not load: {e}") from e


def _clip_factory(key: str, arch: str):
    def factory(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
        return build_clip(key, arch, weights=weights, pretrained=pretrained, image_size=image_size,
                          augment=augment)

    factory.__doc__ = f"CLIP {arch} image tower (open_clip; default weights 'openai', QuickGELU)."
    return factory


for _key, _arch in (("clip_vit_b16", "ViT-B-16"), ("clip_vit_b32", "ViT-B-32"),
                    ("clip_vit_l14", "ViT-L-14"), ("clip_rn50", "RN50")):
    register_backbone(_key, "clip")(_clip_factory(_key, _arch))
