"""The registered backbone ``digits_simclr`` (lpft/vision/lab/backbone.py): tags, contract, cache, shipped weights."""

import pytest
import torch
TINY_TAG = "s6-p0.5-b16-v1"  # as tests/vision/lab/conftest.py (a module named conftest is ambiguous across folders)

from lpft.vision.backbones import Backbone, create_backbone, list_backbones
from lpft.vision.backbones.base import BACKBONES
from lpft.vision.config import RunConfig, resolve_config
from lpft.vision.data import load_split
from lpft.vision.lab import pretrain as P
from lpft.vision.lab.backbone import DEFAULT_TAG, LAB_FAMILY, NAME, canonical_tag, config_from_tag, parse_tag
from lpft.vision.lab.model import values_to_inputs
from lpft.vision.protocol import describe_backbone


def test_tags():
    assert parse_tag("s2000-p0.2") == ({"steps": 2000, "typeset_share": 0.2}, None)
    assert parse_tag("S30-p1-b64-v2-seed7") == (
        {"steps": 30, "typeset_share": 1.0, "batch_size": 64, "typeset_variants": 2}, 7)
    assert parse_tag("s0") == ({"steps": 0}, None)
    for bad in ("simclr", "s-1", "s10-p2", "s10-q0.2", "s10-seed", ""):
        with pytest.raises(ValueError):
            parse_tag(bad)
    cfg = config_from_tag("s30-p0.5-seed4", seed=9)
    assert (cfg.steps, cfg.typeset_share, cfg.seed) == (30, 0.5, 4)
    assert config_from_tag(None, seed=2) == config_from_tag(DEFAULT_TAG, seed=2)
    assert canonical_tag(config_from_tag("s0-p0.5", 0)) == "s0"
    assert canonical_tag(config_from_tag("s200", 0)) == "s200-p0.2"
    assert canonical_tag(config_from_tag("s30-p0.5-b64-v1-seed3", 0)) == "s30-p0.5-b64-v1"


def test_registered_with_a_description_that_matches():
    assert NAME in list_backbones() and BACKBONES.get(NAME).family == LAB_FAMILY
    torch.manual_seed(0)
    bb = create_backbone(NAME, pretrained="none")
    desc = describe_backbone(NAME)
    for attr in ("family", "image_size", "norm_mean", "norm_std", "interpolation"):
        assert getattr(desc, attr) == getattr(bb, attr), attr
    assert repr(desc.train_transform) == repr(bb.train_transform) == repr(bb.eval_transform)
    assert isinstance(bb, Backbone) and bb.feature_dim == 64 and bb.image_size == 8
    assert bb.weights_id.startswith("random:seed0:")
    with pytest.raises(ValueError, match="image_size"):
        create_backbone(NAME, pretrained="none", image_size=64)
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        create_backbone(NAME, pretrained="imagenet")


def test_digits_items_reach_the_network_as_the_raw_values():
    torch.manual_seed(0)
    bb = create_backbone(NAME, pretrained="s0").eval()
    ds = load_split("digits", None, "corrupted", bb.eval_transform)
    X, _ = ds.arrays()
    images = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(images[:, :1], values_to_inputs(X[:20]))
    with torch.no_grad():
        assert torch.allclose(bb(images), bb.net(values_to_inputs(X[:20])), atol=1e-6)


def test_pretraining_seed_is_the_global_seed_and_cached(lab_cache, monkeypatch):
    torch.manual_seed(5)
    a = create_backbone(NAME, pretrained=TINY_TAG)
    cfg = config_from_tag(TINY_TAG, 5)
    assert (lab_cache / cfg.filename).is_file()
    assert a.weights_id.startswith(f"simclr:{TINY_TAG}:seed5:{cfg.key}:")
    monkeypatch.setattr(P, "_train", lambda *args, **kw: pytest.fail("cached: must not train"))
    torch.manual_seed(5)
    b = create_backbone(NAME, pretrained=TINY_TAG)
    assert b.weights_id == a.weights_id
    torch.manual_seed(123)  # a pinned seed ignores the global one
    c = create_backbone(NAME, pretrained=TINY_TAG + "-seed5")
    assert c.weights_id == a.weights_id


def test_weights_file(tmp_path):
    torch.manual_seed(1)
    bb = create_backbone(NAME, pretrained="s0")
    path = tmp_path / "w.pt"
    torch.save(bb.net.state_dict(), path)
    again = create_backbone(NAME, weights=path)
    assert again.weights_id.startswith("file:")
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), bb.eval()(x))


def test_default_setting_loads_the_shipped_checkpoint_without_training(monkeypatch):
    monkeypatch.setattr(P, "_train", lambda *args, **kw: pytest.fail("the default setting must be shipped"))
    torch.manual_seed(0)
    bb = create_backbone(NAME)
    cfg = config_from_tag(DEFAULT_TAG, 0)
    assert (P.WEIGHTS_DIR / cfg.filename).is_file()
    assert bb.weights_id.startswith(f"simclr:{DEFAULT_TAG}:seed0:{cfg.key}:")


def test_the_pair_preset_records_the_setting():
    prov = {}
    cfg = resolve_config(RunConfig(method="lpft", benchmark="digits", backbone=NAME), prov)
    assert cfg.pretrained == DEFAULT_TAG and prov["pretrained"] == f"pair:digits/{NAME}"
    assert cfg.augment is False and cfg.lp_train_augment is False and cfg.freeze_bn is True
    assert cfg.epochs == 30 and cfg.batch_size == 64


def test_the_offline_default_is_the_lab_with_shipped_weights(monkeypatch):
    """``python -m lpft.vision.run --method lpft`` with no other flags: digits on the lab backbone, the setting
    whose 5-seed criterion holds (README, "The offline lab"), loaded from the shipped checkpoint (seed 0)."""
    from lpft.vision.run import build_parser, config_from_args

    cfg = resolve_config(config_from_args(build_parser().parse_args(["--method", "lpft"])))
    assert (cfg.benchmark, cfg.backbone, cfg.pretrained, cfg.seed) == ("digits", NAME, DEFAULT_TAG, 0)
    assert cfg.lr == 3e-3
    monkeypatch.setattr(P, "_train", lambda *args, **kw: pytest.fail("the default run must not pretrain"))
    assert (P.WEIGHTS_DIR / config_from_tag(cfg.pretrained, cfg.seed).filename).is_file()


def test_an_unseeded_process_gets_the_shipped_seed(monkeypatch):
    monkeypatch.setattr(P, "_train", lambda *args, **kw: pytest.fail("seed 0 of the default setting is shipped"))
    monkeypatch.setattr(torch, "initial_seed", lambda: 2 ** 63 + 12345)  # what an unseeded torch reports
    assert create_backbone(NAME).weights_id.startswith(f"simclr:{DEFAULT_TAG}:seed0:")
