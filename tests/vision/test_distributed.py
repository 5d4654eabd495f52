"""The per-rank contract of lpft.vision.distributed, in one process (multi-process checks: test_ddp.py)."""

from __future__ import annotations

import pytest
import torch

from lpft.vision import distributed as D


@pytest.mark.parametrize("n, batch, world, accum", [(160, 32, 2, 1), (161, 32, 2, 2), (37, 8, 4, 2), (5, 8, 2, 4)])
def test_rank_micro_batches_partition_each_global_batch_of_one_process(n, batch, world, accum):
    single = D.rank_micro_batches(n, batch, generator=torch.Generator().manual_seed(7), rank=0, world=1)
    per_rank = [D.rank_micro_batches(n, batch, generator=torch.Generator().manual_seed(7), rank=r, world=world,
                                     grad_accum=accum) for r in range(world)]
    assert all(len(p) == len(single) for p in per_rank)  # the same number of optimizer steps
    for step, (size, (micro,), first) in enumerate(single):
        shares = [i for p in per_rank for m in p[step][1] for i in m]
        assert sorted(shares) == sorted(micro) and len(shares) == size  # every image once, none added
        assert all(p[step][0] == size and p[step][2] == first == micro[0] for p in per_rank)
        lens = [len(m) for p in per_rank for m in p[step][1]]
        assert max(lens) - min(lens) <= 1  # near-equal shares


def test_per_rank_batch_divides_the_global_batch_or_says_how():
    assert D.per_rank_batch(512, 8, 2) == 32
    with pytest.raises(ValueError, match="divisible by world_size x grad_accum = 3 x 1"):
        D.per_rank_batch(64, 3)


def test_shards_cover_the_split_in_order():
    shards = [D.shard_indices(10, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    x = torch.arange(10.0)
    assert torch.equal(D.gather_in_order(x, 10), x)  # one process: identity


def test_determinism_only_on_cpu():
    D.configure(torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()
    D.configure(torch.device("cuda"))  # settings only: no CUDA needed
    try:
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        D.configure(torch.device("cpu"))
        torch.backends.cudnn.benchmark = False


def test_precision_contexts():
    with D.autocast(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with D.autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        D.autocast(torch.device("cpu"), "fp16")


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    from lpft.vision.context import RunContext

    ctx = RunContext(cfg=None, bench=None, backbone=None, train_set=None, train_set_eval=None, eval_sets={},
                     device=torch.device("cpu"), run_dir=tmp_path, cache_dir=tmp_path)
    monkeypatch.setattr(D, "rank_world", lambda: (1, 2))
    ctx.write_json("a.json", {"x": 1})
    ctx.save_torch("b.pt", {"x": 1})
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(D, "rank_world", lambda: (0, 2))
    ctx.write_json("a.json", {"x": 1})
    ctx.save_torch("b.pt", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt"]


def test_feature_cache_key_names_what_changes_features(tmp_path, monkeypatch):
    """precision, CLIP feature normalisation, and (augmented train features) workers and world size."""
    from types import SimpleNamespace

    from lpft.vision import context, features

    keys = []
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: keys.append(k["cache_key"]))
    ds = type("DS", (), {"transform": "T", "__len__": lambda self: 3})()

    def key(**cfg):
        base = dict(backbone="b", benchmark="digits", limit=None, data_root=None, selection="paper", fmow_val=None,
                    precision="fp32", seed=0, num_workers=0, eval_batch_size=8)
        ctx = SimpleNamespace(cfg=SimpleNamespace(**{**base, **cfg}), train_set=ds, train_set_eval=ds,
                              eval_sets={}, backbone=SimpleNamespace(weights_id="w", feature_norm=False),
                              device="cpu", cache_dir=tmp_path, progress=False)
        context.features(ctx, "id_train", train_augment=True)
        return keys[-1]

    ref = key()
    assert key(precision="bf16") != ref
    assert key(num_workers=2) != ref
    assert key(seed=1) != ref
    assert key() == ref
