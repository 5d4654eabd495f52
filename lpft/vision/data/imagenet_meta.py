"""ImageNet metadata shared by the ImageNet and BREEDS benchmarks: wnids, names, folder locations."""

from __future__ import annotations

from pathlib import Path

from lpft.vision.data.base import Benchmark
from lpft.vision.data.folders import find_dir, load_facts

# split -> folders tried under the root, in order
LOCATIONS: dict[str, list[str]] = {
    "train": ["imagenet/train"],
    "val": ["imagenet/val_in_folder", "imagenet/val"],
    "imagenet_v2": [
        "imagenetv2-matched-frequency-format-val",
        "imagenet/imagenetv2-matched-frequency-format-val",
        "ImageNetV2-matched-frequency",
    ],
    "imagenet_r": ["imagenet-r", "imagenet/imagenet-r"],
    "imagenet_a": ["imagenet-a", "imagenet/imagenet-a"],
    "imagenet_sketch": ["sketch", "imagenet/sketch"],
    "objectnet": ["objectnet-1.0/images", "imagenet/objectnet-1.0/images"],
}


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet wnids in class-index order (sorted)."""
    return list(load_facts("imagenet_wnids")["wnids"])


def imagenet_classnames() -> list[str]:
    """The OpenAI CLIP ImageNet class names, in class-index order."""
    return list(load_facts("imagenet_classnames")["classnames"])


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates."""
    return list(load_facts("imagenet_classnames")["templates"])


def objectnet_classes() -> list[dict]:
    """The 113 ObjectNet classes overlapping ImageNet, in label order (folder, name, ImageNet indices)."""
    return list(load_facts("objectnet")["classes"])


def locate(bench: Benchmark, root, key: str, what: str, official: int | None = None) -> Path:
    """The folder of dataset ``key`` under ``root`` (or ``root/imagenet``), else a clear error."""
    d = find_dir(root, LOCATIONS[key])
    if d is None:
        tried = ", ".join(str(Path(root) / c) for c in LOCATIONS[key])
        count = f"; 0 of {official:,} images" if official else ""
        raise bench.missing(f"{what} in one of: {tried}", f"not found{count}")
    return d
