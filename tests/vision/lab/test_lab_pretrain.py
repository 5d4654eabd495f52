"""SimCLR pretraining (lpft/vision/lab/pretrain.py): its own contract on a short run.

The loss decreases, the run is a function of its config (same config -> same weights, another seed -> other
weights), a rerun is a cache hit that trains nothing, and the shipped checkpoint is checked against its sha256.
"""

import dataclasses
import hashlib
import json
import math

import pytest
import torch

from lpft.vision.lab import pretrain as P
from lpft.vision.lab.pretrain import SimCLRConfig, nt_xent, pretrain, state_digest

SHORT = SimCLRConfig(steps=40, batch_size=32, typeset_variants=1, seed=0)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("short")
    return cache, pretrain(SHORT, cache, progress=False, use_shipped=False)


def test_nt_xent_matches_its_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    tau = 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    total = 0.0
    for i in range(8):
        j = (i + 4) % 8
        others = [k for k in range(8) if k != i]
        total += -(sim[i, j] - torch.logsumexp(sim[i, others], 0))
    assert torch.isclose(nt_xent(z1, z2, tau), total / 8, atol=1e-6)
    # identical views of orthogonal images: the partner wins clearly at a low temperature
    e = torch.eye(4)
    assert nt_xent(e, e, 0.05) < 1e-3 < nt_xent(e, torch.roll(e, 1, 0), 0.05)
    with pytest.raises(ValueError, match="shape"):
        nt_xent(torch.zeros(3, 2), torch.zeros(4, 2), 0.1)


def test_loss_decreases_and_is_cached(short_run):
    cache, res = short_run
    assert res.source == "trained" and res.path == cache / SHORT.filename and res.path.is_file()
    losses = [h["loss"] for h in res.history]
    assert res.history[-1]["step"] == SHORT.steps
    # the first window sits near chance (log(2B - 1)); the last quarter is clearly below it
    assert losses[0] > 0.8 * math.log(2 * SHORT.batch_size - 1)
    k = max(1, len(losses) // 4)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k - 0.3
    assert not res.net.training


def test_rerun_is_a_cache_hit(short_run, monkeypatch):
    cache, res = short_run
    monkeypatch.setattr(P, "_train", lambda *a, **k: pytest.fail("a cached config must not train again"))
    again = pretrain(SHORT, cache, progress=False, use_shipped=False)
    assert again.source == "cache" and again.history == res.history
    assert state_digest(again.net.state_dict()) == state_digest(res.net.state_dict())


def test_deterministic_and_seeded(short_run, tmp_path):
    _, res = short_run
    twin = pretrain(SHORT, tmp_path / "twin", progress=False, use_shipped=False)
    assert twin.source == "trained"
    assert state_digest(twin.net.state_dict()) == state_digest(res.net.state_dict())
    other = pretrain(dataclasses.replace(SHORT, seed=1, steps=5), tmp_path / "other", progress=False,
                     use_shipped=False)
    assert state_digest(other.net.state_dict()) != state_digest(res.net.state_dict())


def test_the_key_names_every_field():
    keys = {SHORT.key}
    for change in (dict(seed=1), dict(steps=41), dict(typeset_share=0.3), dict(batch_size=16), dict(lr=1e-3),
                   dict(temperature=0.3), dict(typeset_variants=2), dict(pool_stream=2), dict(width=8),
                   dict(augment=dataclasses.replace(SHORT.augment, blur_p=0.5))):
        keys.add(dataclasses.replace(SHORT, **change).key)
    assert len(keys) == 11
    assert json.loads(json.dumps(SHORT.to_dict())) == SHORT.to_dict()


def test_zero_steps_is_the_seeded_initialisation(tmp_path):
    a = pretrain(SimCLRConfig(steps=0, seed=3), tmp_path)
    b = pretrain(SimCLRConfig(steps=0, seed=3), tmp_path)
    c = pretrain(SimCLRConfig(steps=0, seed=4), tmp_path)
    assert a.source == "init" and a.path is None and not any(tmp_path.iterdir())
    assert state_digest(a.net.state_dict()) == state_digest(b.net.state_dict()) != state_digest(c.net.state_dict())


def test_bad_configs_and_foreign_files(short_run, tmp_path):
    for bad in (dict(steps=-1), dict(batch_size=1), dict(typeset_share=1.5), dict(temperature=0.0), dict(seed=0.5)):
        with pytest.raises(ValueError):
            SimCLRConfig(**bad)
    cache, _ = short_run
    # a file under this config's name holding another config is refused, not silently used
    other = dataclasses.replace(SHORT, steps=3)
    ck = torch.load(cache / SHORT.filename, weights_only=True)
    torch.save(ck, tmp_path / other.filename)
    with pytest.raises(ValueError, match="another config"):
        pretrain(other, tmp_path, progress=False, use_shipped=False)
    # an unreadable file is retrained (with a warning) and replaced
    (tmp_path / SHORT.filename).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        res = pretrain(dataclasses.replace(SHORT), tmp_path, progress=False, use_shipped=False)
    assert res.source == "trained" and torch.load(res.path, weights_only=True)["config"] == SHORT.to_dict()


def test_shipped_checkpoint_is_verified(short_run, tmp_path, monkeypatch):
    cache, res = short_run
    shipped = tmp_path / "weights"
    shipped.mkdir()
    data = (cache / SHORT.filename).read_bytes()
    (shipped / SHORT.filename).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (shipped / "MANIFEST.json").write_text(json.dumps({"files": {SHORT.filename: {"sha256": digest}}}))
    monkeypatch.setattr(P, "WEIGHTS_DIR", shipped)
    got = pretrain(SHORT, tmp_path / "empty-cache", progress=False)
    assert got.source == "shipped" and state_digest(got.net.state_dict()) == state_digest(res.net.state_dict())
    (shipped / "MANIFEST.json").write_text(json.dumps({"files": {SHORT.filename: {"sha256": "0" * 64}}}))
    with pytest.raises(ValueError, match="sha256"):
        pretrain(SHORT, tmp_path / "empty-cache", progress=False)
