"""Head training on cached features against hand-written loops and the official schedules."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpft.vision import engine  # noqa: E402
from lpft.vision.head_training import (  # noqa: E402
    HeadTrainResult, default_linear_init, epoch_permutation, sgd_linear_probe, train_linear_head,
    wiseft_linear_classifier,
)


def _mixture(seed=0, k=4, d=8, n_tr=200, n_va=200, sep=4.0, noise=1.0):
    """Gaussian class clusters, well separated (float32 features, int64 labels)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * sep

    def draw(n):
        y = torch.randint(0, k, (n,), generator=g)
        return means[y] + noise * torch.randn(n, d, generator=g), y

    return (*draw(n_tr), *draw(n_va))


def test_sgd_matches_torch_sgd_and_cosine_annealing_and_manual_momentum():
    xt, yt, xv, yv = _mixture(n_tr=30, d=5, k=3)
    lr, mom, wd, bs, epochs = 0.05, 0.9, 1e-3, 7, 3  # 30 rows / 7 -> a partial last batch
    res = train_linear_head(xt, yt, xv, yv, num_classes=3, optimizer="sgd", lr=lr, epochs=epochs,
                            batch_size=bs, momentum=mom, weight_decay=wd, schedule="cosine_epoch",
                            seed=3, select="last")
    # Oracle 1: a fresh nn.Linear, torch SGD and the official CosineAnnealingLR stepped once per epoch.
    w0, b0 = default_linear_init(3, 5, seed=3)
    lin = torch.nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight.copy_(w0)
        lin.bias.copy_(b0)
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    # Oracle 2: the momentum update written out, w <- w - lr * buf, buf <- mom * buf + (grad + wd * w).
    w, b = w0.clone(), b0.clone()
    bw, bb = None, None
    for e in range(epochs):
        perm = epoch_permutation(30, seed=3, epoch=e)
        ep_lr = lr * 0.5 * (1 + math.cos(math.pi * e / epochs))
        for s in range(0, 30, bs):
            idx = perm[s:s + bs]
            opt.zero_grad()
            F.cross_entropy(lin(xt[idx]), yt[idx]).backward()
            opt.step()
            wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
            F.cross_entropy(F.linear(xt[idx], wr, br), yt[idx]).backward()
            gw, gb = wr.grad + wd * w, br.grad + wd * b
            bw, bb = (gw, gb) if bw is None else (mom * bw + gw, mom * bb + gb)
            w, b = w - ep_lr * bw, b - ep_lr * bb
        sched.step()
    assert res.epoch == epochs
    torch.testing.assert_close(res.weight, lin.weight.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.bias, lin.bias.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.weight, w, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.bias, b, atol=1e-6, rtol=0)
    # The recorded per-epoch lr is the official per-epoch value.
    assert [h["lrs"] for h in res.history[1:]] == [[pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * e / 3)))] * 5
                                                   for e in range(3)]


def test_step_learning_rates_equal_engine_warmup_cosine():
    xt, yt, xv, yv = _mixture(n_tr=50)
    epochs, bs, warm = 4, 8, 5  # 7 steps per epoch, 28 in all
    res = train_linear_head(xt, yt, xv, yv, num_classes=4, optimizer="adamw", lr=1e-2, epochs=epochs,
                            batch_size=bs, weight_decay=0.1, schedule="cosine_step", warmup_steps=warm)
    used = [v for h in res.history[1:] for v in h["lrs"]]
    assert len(used) == 28
    expected = [engine.learning_rate(1e-2, schedule="cosine_step", step=s, epoch=s // 7, steps_per_epoch=7,
                                     epochs=epochs, warmup_steps=warm) for s in range(28)]
    assert used == expected
    # WiSE-FT's cosine_lr written out (src/models/utils.py:15-32): warm-up (s+1)/W, then cosine to 0.
    wise = [1e-2 * (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / (28 - warm))) * 1e-2
            for s in range(28)]
    np.testing.assert_allclose(used, wise, rtol=1e-12)
    assert res.history[-1]["lr"] == used[-1]


def test_gradient_clipping_caps_the_update_norm():
    xt, yt, xv, yv = _mixture(n_tr=64, sep=50.0)  # large features -> large gradients
    w0, b0 = torch.zeros(4, 8), torch.zeros(4)
    kw = dict(num_classes=4, init_weight=w0, init_bias=b0, optimizer="sgd", lr=0.5, epochs=1, batch_size=64,
              momentum=0.0, schedule="constant")
    clipped = train_linear_head(xt, yt, xv, yv, grad_clip=0.1, **kw)
    free = train_linear_head(xt, yt, xv, yv, **kw)

    def step_norm(r):
        return torch.cat([(r.weight - w0).flatten(), (r.bias - b0).flatten()]).norm().item()

    assert step_norm(free) > 10 * 0.5 * 0.1  # the raw gradient really exceeds the cap
    assert step_norm(clipped) == pytest.approx(0.5 * 0.1, rel=1e-4)  # one SGD step of norm lr * clip


def test_zero_epochs_returns_the_init_exactly():
    xt, yt, xv, yv = _mixture()
    w0, b0 = torch.randn(4, 8), torch.randn(4)
    res = train_linear_head(xt, yt, xv, yv, num_classes=4, init_weight=w0, init_bias=b0, optimizer="sgd",
                            lr=0.1, epochs=0, batch_size=16, schedule="cosine_epoch")
    assert res.epoch == 0 and torch.equal(res.weight, w0) and torch.equal(res.bias, b0)
    assert res.val_acc == pytest.approx(((xv @ w0.T + b0).argmax(1) == yv).float().mean().item())
    # WiSE-FT LC with no training keeps the zero-shot head (applied to normalised features).
    zs = wiseft_linear_classifier(xt, yt, xv, yv, zeroshot_weight=w0, epochs=0)
    assert zs.epoch == 0 and torch.equal(zs.weight, w0) and torch.equal(zs.bias, torch.zeros(4))
    assert zs.val_acc == pytest.approx(((F.normalize(xv, dim=-1) @ w0.T).argmax(1) == yv).float().mean().item())


def test_best_versus_last_epoch():
    # Validation labels are the training labels flipped: the head starts right on val and drifts wrong,
    # so the best epoch (never epoch 0) comes before the last.
    xt, yt, xv, yv = _mixture(k=2, sep=1.0, noise=1.0, n_tr=200, n_va=200, seed=1)
    w0 = torch.linalg.lstsq(torch.cat([xv, torch.ones(200, 1)], 1),
                            F.one_hot(1 - yv, 2).float() * 2 - 1).solution.T  # fits the flipped val labels
    kw = dict(num_classes=2, init_weight=w0[:, :-1], init_bias=w0[:, -1], optimizer="sgd", lr=0.05,
              batch_size=50, schedule="constant", momentum=0.0)
    last = train_linear_head(xt, yt, xv, 1 - yv, epochs=6, select="last", **kw)
    best = train_linear_head(xt, yt, xv, 1 - yv, epochs=6, select="best", **kw)
    accs = [h["val_acc"] for h in last.history]
    assert last.epoch == 6 and last.val_acc == accs[6]
    assert 1 <= best.epoch < 6 and best.val_acc == max(accs[1:]) > accs[6]
    assert best.epoch == 1 + accs[1:].index(max(accs[1:]))  # ties keep the earlier epoch
    assert accs[0] > best.val_acc  # the better initial head (epoch 0) is logged but not a candidate
    # The kept weights are that epoch's: with a constant schedule, training exactly that long gives them.
    again = train_linear_head(xt, yt, xv, 1 - yv, epochs=best.epoch, select="last", **kw)
    assert torch.equal(again.weight, best.weight) and torch.equal(again.bias, best.bias)
    # On a plateau (every epoch perfect) "best" keeps the first epoch.
    easy = _mixture(seed=4, k=3, sep=10.0, noise=0.1)
    flat = train_linear_head(*easy, num_classes=3, optimizer="sgd", lr=0.1, epochs=3, batch_size=32,
                             schedule="cosine_epoch")
    assert [h["val_acc"] for h in flat.history[1:]] == [1.0, 1.0, 1.0] and flat.epoch == 1


def test_sgd_linear_probe_picks_the_best_lr_and_separates_the_mixture():
    xt, yt, xv, yv = _mixture(seed=2, k=5, d=10, n_tr=400, n_va=300, sep=1.3, noise=1.0)
    res = sgd_linear_probe(xt, yt, xv, yv, num_classes=5, lrs=(1e-6, 0.01, 0.1), epochs=5, batch_size=32)
    accs = {lr: acc for lr, acc, _ in res.per_lr}
    assert accs[1e-6] < 0.6  # essentially the random init
    assert accs[0.1] < accs[0.01]  # here the middle lr wins, so "largest lr" would fail
    assert res.val_acc == max(accs.values()) > 0.9
    assert res.lr == min(lr for lr, a in accs.items() if a == res.val_acc)
    direct = train_linear_head(xt, yt, xv, yv, num_classes=5, optimizer="sgd", lr=res.lr, epochs=5, batch_size=32,
                               schedule="cosine_epoch")
    assert torch.equal(direct.weight, res.weight) and direct.epoch == res.epoch
    # Ties go to the smaller learning rate.
    easy = _mixture(seed=4, k=3, sep=10.0, noise=0.1)
    tie = sgd_linear_probe(*easy, num_classes=3, lrs=(0.2, 0.1), epochs=2, batch_size=32)
    assert [a for _, a, _ in tie.per_lr] == [1.0, 1.0] and tie.lr == 0.1


def test_wiseft_linear_classifier_recipe_and_last_epoch():
    xt, yt, xv, yv = _mixture(n_tr=300)
    zs_w = F.normalize(torch.randn(4, 8), dim=-1) * 100.0
    res = wiseft_linear_classifier(xt, yt, xv, yv, zeroshot_weight=zs_w, lr=1e-3, epochs=3, batch_size=64,
                                   warmup_steps=4)
    ref = train_linear_head(F.normalize(xt, dim=-1), yt, F.normalize(xv, dim=-1), yv, num_classes=4,
                            init_weight=zs_w, optimizer="adamw", lr=1e-3, epochs=3, batch_size=64,
                            weight_decay=0.1, schedule="cosine_step", warmup_steps=4, grad_clip=1.0, select="last")
    assert res.epoch == 3 and torch.equal(res.weight, ref.weight) and torch.equal(res.bias, ref.bias)
    assert not torch.equal(res.weight, zs_w)


def test_determinism_val_project_and_numpy_inputs():
    xt, yt, xv, yv = _mixture()
    kw = dict(num_classes=4, optimizer="sgd", lr=0.1, epochs=3, batch_size=16, schedule="cosine_epoch", seed=7)
    a = train_linear_head(xt, yt, xv, yv, **kw)
    b = train_linear_head(xt.numpy(), yt.numpy(), xv.numpy(), yv.numpy(), **kw)
    assert isinstance(a, HeadTrainResult)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.history == b.history
    assert not torch.equal(a.weight, train_linear_head(xt, yt, xv, yv, **{**kw, "seed": 8}).weight)

    def mask_class0(logits):
        out = logits.clone()
        out[:, 0] = -math.inf
        return out

    masked = train_linear_head(xt, yt, xv, yv, val_project=mask_class0, **kw)
    pred = F.linear(xv, masked.weight, masked.bias)[:, 1:].argmax(1) + 1
    assert masked.val_acc == pytest.approx((pred == yv).float().mean().item())
    assert masked.val_acc <= 1.0 - (yv == 0).float().mean().item() + 1e-9


def test_default_init_is_seeded_and_in_torch_linear_bounds():
    w1, b1 = default_linear_init(6, 25, seed=0)
    w2, b2 = default_linear_init(6, 25, seed=0)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert w1.abs().max() <= 0.2 and b1.abs().max() <= 0.2 and w1.std() > 0.05  # U(-1/sqrt(25), 1/sqrt(25))
    assert not torch.equal(w1, default_linear_init(6, 25, seed=1)[0])


@pytest.mark.parametrize("change, match", [
    (dict(train_y=torch.tensor([0, 1, 5])), "train_y must be 1-D with 4"),
    (dict(train_y=torch.tensor([0, 1, 2, 9])), r"train_y must lie in 0\.\.3"),
    (dict(val_y=torch.tensor([0, -1])), r"val_y must lie in 0\.\.3"),
    (dict(train_y=torch.tensor([0.0, 1.0, 2.0, 3.0])), "integer class indices"),
    (dict(val_x=torch.zeros(2, 3)), "val_x has dimension 3"),
    (dict(train_x=torch.zeros(0, 5), train_y=torch.zeros(0, dtype=torch.long)), "train_x must be a non-empty"),
    (dict(val_x=torch.zeros(0, 5), val_y=torch.zeros(0, dtype=torch.long)), "val_x must be a non-empty"),
    (dict(train_x=torch.tensor([[math.nan] * 5] * 4)), "NaN"),
    (dict(optimizer="lbfgs"), "unknown optimizer"),
    (dict(schedule="step"), "unknown schedule"),
    (dict(select="median"), "unknown select"),
    (dict(lr=0.0), "lr must be"),
    (dict(epochs=-1), "epochs must be"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(grad_clip=0.0), "grad_clip must be"),
    (dict(init_weight=torch.zeros(3, 5)), r"init_weight must have shape \(4, 5\)"),
    (dict(init_weight=torch.zeros(4, 5), init_bias=torch.zeros(5)), r"init_bias must have shape \(4,\)"),
    (dict(init_bias=torch.zeros(4)), "init_bias was given without init_weight"),
    (dict(num_classes=0), "num_classes must be"),
])
def test_bad_input_raises_value_error(change, match):
    args = dict(train_x=torch.randn(4, 5), train_y=torch.tensor([0, 1, 2, 3]), val_x=torch.randn(2, 5),
                val_y=torch.tensor([0, 1]), num_classes=4, optimizer="sgd", lr=0.1, epochs=1, batch_size=2,
                schedule="constant")
    args.update(change)
    with pytest.raises(ValueError, match=match):
        train_linear_head(**args)


def test_wrapper_errors():
    xt, yt, xv, yv = _mixture()
    with pytest.raises(ValueError, match="lrs is empty"):
        sgd_linear_probe(xt, yt, xv, yv, num_classes=4, lrs=())
    with pytest.raises(ValueError, match="zeroshot_weight must be a 2-D"):
        wiseft_linear_classifier(xt, yt, xv, yv, zeroshot_weight=torch.zeros(8))
    with pytest.raises(ValueError, match=r"init_weight must have shape \(4, 8\)"):
        wiseft_linear_classifier(xt, yt, xv, yv, zeroshot_weight=torch.zeros(4, 7))
