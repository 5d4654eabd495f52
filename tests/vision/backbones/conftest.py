"""Shared fixtures of the backbone tests: PIL images in many modes, a random ResNet-50 state dict."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def make_images() -> dict:
    """PIL images in several modes and sizes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), mode="RGB")
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "P": rgb.convert("P"),
        "1": rgb.convert("1"),
        "I;16": Image.fromarray(rng.integers(0, 4096, (20, 30), dtype=np.uint16)),
    }


@pytest.fixture
def pil_images() -> dict:
    return make_images()


@pytest.fixture(scope="session")
def resnet_sd():
    """A torchvision ResNet-50 state dict with random weights and non-trivial BN statistics."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    sd = resnet50(weights=None).state_dict()
    # Make BN statistics non-trivial so that equality checks mean something.
    for k, v in sd.items():
        if k.endswith(("running_mean", "running_var")):
            sd[k] = torch.rand_like(v) + 0.5
    return sd
