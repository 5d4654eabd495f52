"""Weight files and downloads for the backbones: reading checkpoints, strict loading, cache look-ups, ids.

Weights that are not on disk and cannot be downloaded raise :class:`WeightsNotFoundError` (a subclass of both
``FileNotFoundError`` and ``RuntimeError``) naming where they were looked for and how to supply them
(pre-download, or pass a local file as ``weights=`` / ``--weights``). Setting ``HF_HUB_OFFLINE=1`` (or
``LPFT_OFFLINE=1``) forbids every download, including torchvision's.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

__all__ = ["RANDOM_TAGS", "WeightsMismatchError", "WeightsNotFoundError"]

#: ``pretrained`` tags that ask for a random initialisation (seeded by the global torch RNG).
RANDOM_TAGS = ("none", "random")


class WeightsNotFoundError(FileNotFoundError, RuntimeError):
    """Pretrained weights are neither on disk nor downloadable; the message says where to put them."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the architecture (missing, unexpected or mis-shaped keys)."""


def is_random_tag(tag: str | None) -> bool:
    """Whether ``pretrained=tag`` asks for a random initialisation."""
    return tag is not None and str(tag).lower() in RANDOM_TAGS


def offline() -> bool:
    """Whether downloads are forbidden (``HF_HUB_OFFLINE`` or ``LPFT_OFFLINE`` set to a true value)."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "LPFT_OFFLINE"))


def file_id(path: str | os.PathLike) -> str:
    """``"file:<absolute path>:<sha256 prefix>"``: names a local weights file by content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return f"file:{Path(path).resolve()}:{h.hexdigest()[:12]}"


def random_id(module: nn.Module, seed: int) -> str:
    """``"random:seed<s>:<digest>"``: names a random initialisation by its seed and its tensors."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"random:seed{seed}:{h.hexdigest()[:12]}"


def load_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file.

    Accepts a plain state dict, ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"model_state_dict": ...}``
    checkpoints (other entries such as ``epoch`` or ``optimizer`` are ignored), a TorchScript archive, or
    a ``.safetensors`` file.

    Raises:
        WeightsMismatchError: the file cannot be read or holds no mapping of names to tensors.
    """
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file as load_safetensors

        return dict(load_safetensors(path, device="cpu"))
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


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key if every key has it (e.g. DataParallel's ``module.``)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the offending keys.

    Raises:
        WeightsMismatchError: missing, unexpected or mis-shaped keys.
    """
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


def not_found(what: str, looked: list[str], extra: str = "") -> WeightsNotFoundError:
    """The error for weights that are nowhere to be found: where we looked and how to supply them."""
    where = "; ".join(looked)
    return WeightsNotFoundError(
        f"could not get {what}: not found in {where}"
        f"{' (downloads disabled: HF_HUB_OFFLINE/LPFT_OFFLINE is set)' if offline() else ''}. "
        f"Pre-download it on a machine with internet access (then copy the cache directory), or pass a local "
        f"weights file with --weights PATH (create_backbone(..., weights=PATH)).{(' ' + extra) if extra else ''}"
    )


def torch_hub_file(url: str, what: str) -> str:
    """Path of ``url`` in torch hub's checkpoint cache, downloading it unless offline.

    Raises:
        WeightsNotFoundError: not cached, and offline or the download failed.
    """
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target = ckpt_dir / os.path.basename(url)
    if target.is_file():
        return str(target)
    looked = [f"torch hub cache {ckpt_dir} (file {target.name})"]
    if offline():
        raise not_found(what, looked, f"Source URL: {url}")
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as e:  # noqa: BLE001 - any network failure becomes one clear error
        raise not_found(what, looked, f"Download from {url} failed: {e}") from e
    return str(target)
