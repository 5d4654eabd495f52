"""Train a linear head on cached (frozen-backbone) features with a gradient-based optimiser recipe.

Two official procedures are head-only training with SGD / AdamW rather than a convex solver
(:mod:`lpft.vision.linear_probe` is the sklearn-style C path):

**LP-FT's ImageNet "torch linprobe"** (AnanyaKumar/transfer_learning, HEAD 13c3e2b; release 36fb2ef in
brackets), both the ImageNet LP row and the head LP-FT phase 2 starts from. ``RAE`` =
``scripts/run_adaptation_experiments.py``, ``BT`` = ``unlabeled_extrapolation/baseline_train.py``,
configs under ``configs/adaptation/``:

* LR grid 0.01, 0.03, 0.1 (``RAE:1495-1499`` [``:966-969``]); LP-FT phase 2 loads the lr-0.1 run's
  ``ckp_best_val`` (``RAE:1632-1638`` [``:1022-1028``]).
* 5 epochs: ``--epochs 5`` sets ``epochs`` and ``scheduler.args.T_max`` (``RAE:1616-1618``
  [``:1008-1010``]; run path ``torch_linprobe_epochs5_…/epochs-5_…T_max-5``).
* ``torch.optim.SGD``, momentum 0.9, weight decay 0 (``resnet50_transfer.yaml:13-18``; the release has no
  ``weight_decay`` key, i.e. torch's default 0). Mean cross-entropy (``resnet50_transfer.yaml:20-23``).
* Batch 128 (``imagenet.yaml:8``, overriding the inherited 64 of ``resnet50_transfer.yaml:5``); a shuffled
  ``DataLoader`` that keeps the last partial batch (``BT:171-175`` [``:139-143``]).
* ``CosineAnnealingLR(T_max=epochs)``, eta_min 0, stepped once after each epoch, no warm-up
  (``imagenet.yaml:15-18``; ``BT:659-660`` [``:402``]). No gradient clipping (``max_grad_norm`` unset,
  ``BT:421-422``; absent in the release).
* Head: a fresh ``nn.Linear(output_dim, num_classes)`` with torch's default init (``models/clip_model.py
  :180-183``; ``BT:216`` [``:177``]). Backbone frozen and in eval ("val") mode (``BT:196-203, 349-350,
  813-820`` [``:164, 252-253, 546-550``]), so cached features are equivalent.
* Train transform Resize 224 (bicubic) + CenterCrop 224, deterministic, so caching is exact
  (``datasets_imagenet.yaml:12-20``; ``imagenet_augs`` is the augmented variant).
* Epoch: ``ckp_best_val`` on ImageNet val (``datasets_imagenet.yaml:60-61``); a strictly greater accuracy
  replaces the kept epoch (ties keep the earlier) and the pre-training evaluation is not a candidate
  (``BT:614-628, 687-698`` [``:374-380, 429-437``]).

Choices where the source is silent or not reproducible here: the LR is picked by best-epoch validation
accuracy, ties to the smaller LR (the official code hard-codes 0.1 after its sweep). The official features
are CLIP's raw projected embedding (``clip_model.py:197-198``); the caller decides what it passes, and the
LR grid was tuned for the raw scale.

**WiSE-FT's linear-classifier (LC) variant** (mlfoundations/wise-ft HEAD 58b7a4b): ``--freeze-encoder``
fine-tunes the zero-shot ``ClassificationHead`` (``normalize=True``: inputs L2-normalised,
``src/models/modeling.py:35-50``) on features of ``val_preprocess`` (un-augmented) train images
(``src/models/finetune.py:26-32``; ``src/datasets/common.py:94-139``), with the end-to-end recipe: AdamW
(torch default betas / eps), wd 0.1 on every parameter (``finetune.py:61-62``; ``src/args.py:81-86``),
``cosine_lr`` with 500 linear warm-up steps then per-step cosine to 0 (``finetune.py:64, 74-75``;
``src/models/utils.py:15-32``; ``args.py:93-97``), ``clip_grad_norm_(params, 1.0)`` (``finetune.py:89``),
cross-entropy without label smoothing (``args.py:87-92``), a shuffled loader (``common.py:136``), and the
README's lr 3e-5, batch 512, 10 epochs (``README.md:80-84, 95``). theta_1 is the last epoch's head.

Both schedules are :func:`lpft.vision.engine.learning_rate` (``cosine_epoch`` = LP-FT, ``cosine_step`` =
WiSE-FT) and the optimisers :func:`lpft.vision.engine.make_optimizer`, so they equal end-to-end training's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lpft.vision.progress import tqdm

from lpft.vision.engine import TrainingDiverged, learning_rate, make_optimizer
from lpft.vision.features import resolve_device

__all__ = ["HeadTrainResult", "SGDProbeResult", "epoch_permutation", "default_linear_init",
           "train_linear_head", "sgd_linear_probe", "wiseft_linear_classifier"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine_epoch", "cosine_step", "constant")
SELECTS = ("best", "last")
_EVAL_CHUNK = 65536  # validation rows per matmul (bounds memory for ImageNet-sized sets)


@dataclasses.dataclass
class HeadTrainResult:
    """Outcome of :func:`train_linear_head`.

    Attributes:
        weight: ``[num_classes, dim]`` float32 CPU tensor of the selected epoch.
        bias: ``[num_classes]`` float32 CPU tensor.
        epoch: the selected epoch (1-based; 0 = the initial head, only when ``epochs == 0``).
        val_acc: validation accuracy of the selected epoch, in [0, 1].
        history: one dict per epoch 0..E: ``epoch``, ``val_acc``, ``train_loss`` (sample mean; None at 0),
            ``lr`` (the last step's; None at 0) and ``lrs`` (every step's learning rate, in order).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    epoch: int
    val_acc: float
    history: list[dict[str, Any]]


@dataclasses.dataclass
class SGDProbeResult:
    """Outcome of :func:`sgd_linear_probe`: the head of the chosen learning rate.

    Attributes:
        weight / bias: float32 CPU head (``[num_classes, dim]`` / ``[num_classes]``).
        lr: the chosen learning rate.
        epoch: its selected epoch.
        val_acc: its validation accuracy.
        per_lr: ``[(lr, val_acc, epoch), ...]`` for every learning rate, in the order given.
        history: the chosen run's per-epoch history (see :class:`HeadTrainResult`).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    lr: float
    epoch: int
    val_acc: float
    per_lr: list[tuple[float, float, int]]
    history: list[dict[str, Any]]


# --- input checks ---------------------------------------------------------------------------------------
def _features(name: str, a: Any) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [num_samples, dim] array, got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {a.dtype}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a.detach()


def _labels(name: str, a: Any, n: int, num_classes: int) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per feature row), got shape {tuple(a.shape)}")
    if a.is_floating_point() or a.is_complex() or a.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    a = a.detach().to(torch.long)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in 0..{num_classes - 1} (num_classes={num_classes}), got {lo}..{hi}")
    return a


def _choice(name: str, value: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(options)}")
    return value


def _nonneg(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --- building blocks ------------------------------------------------------------------------------------
def epoch_permutation(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: ``randperm(n)`` from a CPU generator seeded ``seed * 1000 + epoch``.

    The same per-epoch seed as :func:`lpft.vision.engine.train`'s loader, and independent of the device.
    """
    g = torch.Generator().manual_seed(int(seed) * 1000 + int(epoch))
    return torch.randperm(int(n), generator=g)


def default_linear_init(num_classes: int, dim: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's default ``nn.Linear(dim, num_classes)`` init, drawn from a generator seeded ``seed``.

    ``kaiming_uniform_(a=sqrt(5))`` on the weight and the default bias init both amount to
    ``U(-1/sqrt(dim), 1/sqrt(dim))``; the official LP starts from such a fresh layer (``clip_model.py:182``).
    The generator keeps the draw reproducible without touching torch's global RNG. Weight first, then bias.
    """
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(dim)
    w = torch.empty(num_classes, dim).uniform_(-bound, bound, generator=g)
    b = torch.empty(num_classes).uniform_(-bound, bound, generator=g)
    return w, b


@torch.no_grad()
def _accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              project: Callable[[torch.Tensor], torch.Tensor] | None) -> float:
    correct = 0
    for s in range(0, x.shape[0], _EVAL_CHUNK):
        logits = F.linear(x[s:s + _EVAL_CHUNK].float(), w, b)
        if project is not None:
            logits = project(logits)
        correct += int((logits.argmax(dim=1) == y[s:s + _EVAL_CHUNK]).sum())
    return correct / x.shape[0]


# --- training -------------------------------------------------------------------------------------------
def train_linear_head(
    train_x: Any, train_y: Any, val_x: Any, val_y: Any, *, num_classes: int,
    init_weight: torch.Tensor | None = None, init_bias: torch.Tensor | None = None,
    optimizer: str, lr: float, epochs: int, batch_size: int, momentum: float = 0.9, weight_decay: float = 0.0,
    schedule: str, warmup_steps: int = 0, grad_clip: float | None = None, seed: int = 0,
    device: str | torch.device = "cpu", select: str = "best",
    val_project: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = False,
) -> HeadTrainResult:
    """Train ``logits = x @ W.T + b`` with cross-entropy on fixed features; select an epoch on validation.

    Each epoch visits the training rows in :func:`epoch_permutation` order in mini-batches of ``batch_size``
    (the last one may be smaller, as a ``DataLoader`` without ``drop_last``). Before every step the learning
    rate is set to ``engine.learning_rate(lr, schedule, step, epoch, ...)``; then zero-grad, mean
    cross-entropy, backward, optional ``clip_grad_norm_(grad_clip)``, optimiser step. The head, the loss and
    the features (cast per batch) are float32; no autocast.

    Args:
        train_x / val_x: ``[N, D]`` floating features (any float dtype; moved to ``device`` as stored).
        train_y / val_y: ``[N]`` integer labels in ``0..num_classes-1``.
        num_classes: number of output classes.
        init_weight / init_bias: starting head ``[num_classes, D]`` / ``[num_classes]`` (e.g. a zero-shot
            head). Without ``init_weight``: :func:`default_linear_init` with ``seed``. ``init_bias`` None
            with an ``init_weight``: zeros (as WiSE-FT's ``ClassificationHead``).
        optimizer: ``"sgd"`` or ``"adamw"`` (via ``engine.make_optimizer``; momentum applies to SGD only).
        lr / epochs / batch_size / momentum / weight_decay / warmup_steps: the recipe.
        schedule: ``"cosine_epoch"``, ``"cosine_step"`` or ``"constant"`` (see ``engine.learning_rate``).
        grad_clip: max global gradient norm, or None for no clipping.
        seed: seeds the default init and the per-epoch permutations.
        device: where to train (``"auto"`` = CUDA if available).
        select: ``"best"`` = highest val accuracy over epochs 1..E (ties keep the earlier epoch; epoch 0 is
            logged but is a candidate only when ``epochs == 0``); ``"last"`` = epoch E.
        val_project: optional map applied to validation logits before the argmax (class masks, pooling).
        progress: show a tqdm bar over epochs.

    Returns:
        :class:`HeadTrainResult`.

    Raises:
        ValueError: on malformed inputs or an unknown optimizer / schedule / select.
        TrainingDiverged: if the loss becomes non-finite.
    """
    num_classes = _count("num_classes", num_classes, 1)
    xt, xv = _features("train_x", train_x), _features("val_x", val_x)
    if xv.shape[1] != xt.shape[1]:
        raise ValueError(f"val_x has dimension {xv.shape[1]} but train_x has {xt.shape[1]}")
    yt = _labels("train_y", train_y, xt.shape[0], num_classes)
    yv = _labels("val_y", val_y, xv.shape[0], num_classes)
    _choice("optimizer", optimizer, OPTIMIZERS)
    _choice("schedule", schedule, SCHEDULES)
    _choice("select", select, SELECTS)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    epochs, batch_size = _count("epochs", epochs, 0), _count("batch_size", batch_size, 1)
    warmup_steps = _count("warmup_steps", warmup_steps, 0)
    momentum, weight_decay = _nonneg("momentum", momentum), _nonneg("weight_decay", weight_decay)
    if grad_clip is not None and not (_nonneg("grad_clip", grad_clip) > 0):
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
    if val_project is not None and not callable(val_project):
        raise ValueError(f"val_project must be callable or None, got {type(val_project).__name__}")

    dim = xt.shape[1]
    if init_weight is None:
        if init_bias is not None:
            raise ValueError("init_bias was given without init_weight; pass both, or only init_weight")
        w0, b0 = default_linear_init(num_classes, dim, seed=seed)
    else:
        w0 = torch.as_tensor(init_weight).detach().float()
        if tuple(w0.shape) != (num_classes, dim):
            raise ValueError(f"init_weight must have shape ({num_classes}, {dim}), got {tuple(w0.shape)}")
        b0 = torch.zeros(num_classes) if init_bias is None else torch.as_tensor(init_bias).detach().float()
        if tuple(b0.shape) != (num_classes,):
            raise ValueError(f"init_bias must have shape ({num_classes},), got {tuple(b0.shape)}")
        if not (torch.isfinite(w0).all() and torch.isfinite(b0).all()):
            raise ValueError("init_weight / init_bias contain NaN or infinite values")

    dev = resolve_device(device)
    xt, yt, xv, yv = xt.to(dev), yt.to(dev), xv.to(dev), yv.to(dev)
    w = torch.nn.Parameter(w0.clone().to(dev))
    b = torch.nn.Parameter(b0.clone().to(dev))
    params = [w, b]
    opt = make_optimizer(params, optimizer=optimizer, lr=float(lr), momentum=momentum, weight_decay=weight_decay)

    acc0 = _accuracy(w.detach(), b.detach(), xv, yv, val_project)
    history: list[dict[str, Any]] = [{"epoch": 0, "val_acc": acc0, "train_loss": None, "lr": None, "lrs": []}]
    best = (w0.clone(), b0.clone(), 0, acc0)  # (weight, bias, epoch, val_acc) on CPU
    n = xt.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    for epoch in tqdm(range(epochs), desc="head", disable=not progress, leave=False):
        perm = epoch_permutation(n, seed=seed, epoch=epoch).to(dev)
        total, lrs = 0.0, []
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            step_lr = learning_rate(float(lr), schedule=schedule, step=epoch * steps_per_epoch + i, epoch=epoch,
                                    steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_steps=warmup_steps)
            for g in opt.param_groups:
                g["lr"] = step_lr
            lrs.append(step_lr)
            loss = F.cross_entropy(F.linear(xt[idx].float(), w, b), yt[idx])
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"head training loss became {loss.item()} at epoch {epoch + 1}, step {i} "
                                       f"(lr={step_lr:.3g}); try a smaller lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
            opt.step()
            total += loss.item() * idx.numel()
        acc = _accuracy(w.detach(), b.detach(), xv, yv, val_project)
        history.append({"epoch": epoch + 1, "val_acc": acc, "train_loss": total / n, "lr": lrs[-1], "lrs": lrs})
        # LP-FT's ckp_best_val: a strictly better epoch replaces the kept one; epoch 0 never competes.
        if select == "last" or best[2] == 0 or acc > best[3]:
            best = (w.detach().cpu().clone(), b.detach().cpu().clone(), epoch + 1, acc)
    weight, bias, epoch_sel, acc_sel = best
    return HeadTrainResult(weight=weight.float().contiguous(), bias=bias.float().contiguous(),
                           epoch=epoch_sel, val_acc=acc_sel, history=history)


def sgd_linear_probe(
    train_x: Any, train_y: Any, val_x: Any, val_y: Any, *, num_classes: int,
    lrs: Sequence[float] = (0.01, 0.03, 0.1), epochs: int = 5, batch_size: int = 128, momentum: float = 0.9,
    weight_decay: float = 0.0, schedule: str = "cosine_epoch", seed: int = 0, device: str | torch.device = "cpu",
    select: str = "best", val_project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> SGDProbeResult:
    """LP-FT's ImageNet "torch linprobe": SGD on a fresh head per learning rate, best on validation.

    Defaults are the official recipe (module docstring): lrs 0.01 / 0.03 / 0.1, 5 epochs, batch 128, SGD
    momentum 0.9, no weight decay, per-epoch cosine (``CosineAnnealingLR(T_max=epochs)``), no warm-up or
    clipping, the best validation epoch per run. Every run starts from the same default init (``seed``).
    The learning rate with the highest selected-epoch validation accuracy wins; ties go to the smaller lr.

    Args:
        train_x / train_y / val_x / val_y / num_classes / device / val_project / progress: as
            :func:`train_linear_head`.
        lrs: learning rates to try (non-empty).
        epochs / batch_size / momentum / weight_decay / schedule / seed / select: the per-run recipe.

    Returns:
        :class:`SGDProbeResult`.
    """
    lrs = [float(v) for v in lrs]
    if not lrs:
        raise ValueError("lrs is empty; give at least one learning rate")
    runs: list[tuple[float, HeadTrainResult]] = []
    for lr in lrs:
        runs.append((lr, train_linear_head(
            train_x, train_y, val_x, val_y, num_classes=num_classes, optimizer="sgd", lr=lr, epochs=epochs,
            batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, schedule=schedule, seed=seed,
            device=device, select=select, val_project=val_project, progress=progress)))
    lr_best, best = min(runs, key=lambda r: (-r[1].val_acc, r[0]))
    return SGDProbeResult(weight=best.weight, bias=best.bias, lr=lr_best, epoch=best.epoch, val_acc=best.val_acc,
                          per_lr=[(lr, r.val_acc, r.epoch) for lr, r in runs], history=best.history)


def wiseft_linear_classifier(
    train_x: Any, train_y: Any, val_x: Any, val_y: Any, *, zeroshot_weight: torch.Tensor,
    zeroshot_bias: torch.Tensor | None = None, lr: float = 3e-5, epochs: int = 10, batch_size: int = 512,
    weight_decay: float = 0.1, warmup_steps: int = 500, grad_clip: float | None = 1.0, seed: int = 0,
    device: str | torch.device = "cpu", normalize: bool = True,
    val_project: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = False,
) -> HeadTrainResult:
    """WiSE-FT's linear-classifier variant: fine-tune the zero-shot head with the end-to-end recipe.

    AdamW (wd 0.1), 500-step linear warm-up then per-step cosine to 0, gradient norm clipped to 1.0, lr
    3e-5, batch 512, 10 epochs, and the LAST epoch's head (WiSE-FT's theta_1). With ``normalize`` the rows
    of ``train_x`` / ``val_x`` are L2-normalised first, which is what ``ClassificationHead(normalize=True)``
    does inside its forward; the returned head therefore applies to L2-normalised features, like the
    zero-shot head of :func:`lpft.vision.zeroshot.zeroshot_head`. Pass features of un-augmented train images.

    Args:
        train_x / train_y / val_x / val_y / seed / device / val_project / progress: as
            :func:`train_linear_head`.
        zeroshot_weight: ``[num_classes, D]`` initial head (temperature-scaled text embeddings).
        zeroshot_bias: ``[num_classes]`` initial bias; None = zeros.
        lr / epochs / batch_size / weight_decay / warmup_steps / grad_clip: the recipe (WiSE-FT defaults).
        normalize: L2-normalise feature rows before training and evaluation.

    Returns:
        :class:`HeadTrainResult` with ``epoch == epochs`` (or 0: the zero-shot head, when ``epochs == 0``).
    """
    w0 = torch.as_tensor(zeroshot_weight)
    if w0.ndim != 2:
        raise ValueError(f"zeroshot_weight must be a 2-D [num_classes, dim] tensor, got shape {tuple(w0.shape)}")
    xt, xv = _features("train_x", train_x), _features("val_x", val_x)
    if normalize:
        xt, xv = F.normalize(xt.float(), dim=-1), F.normalize(xv.float(), dim=-1)
    return train_linear_head(
        xt, train_y, xv, val_y, num_classes=w0.shape[0], init_weight=w0, init_bias=zeroshot_bias,
        optimizer="adamw", lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay,
        schedule="cosine_step", warmup_steps=warmup_steps, grad_clip=grad_clip, seed=seed, device=device,
        select="last", val_project=val_project, progress=progress)
