"""Shared fixtures of the benchmark-loader tests: miniature datasets in their real layouts."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision.data import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory):
    """All seven ImageNet folders at the root level (1 image per class, train 1 per class)."""
    return fixtures.build_imagenet(tmp_path_factory.mktemp("imagenet_root"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    return fixtures.build_cifar(tmp_path_factory.mktemp("cifar_root"))


@pytest.fixture(scope="session")
def domainnet_root(tmp_path_factory):
    return fixtures.build_domainnet(tmp_path_factory.mktemp("domainnet_root"))
