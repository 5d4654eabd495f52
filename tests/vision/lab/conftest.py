"""Shared fixtures of the lab tests: a private pretraining cache, so no test reads or writes ~/.cache."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: a pretraining setting that trains in well under a second: 6 steps, batch 16, one typeset render per glyph
TINY_TAG = "s6-p0.5-b16-v1"


@pytest.fixture(autouse=True)
def lab_cache(tmp_path, monkeypatch):
    """Every test gets an empty pretraining cache ($LPFT_LAB_CACHE)."""
    cache = tmp_path / "lab-cache"
    monkeypatch.setenv("LPFT_LAB_CACHE", str(cache))
    return cache
