"""FLYP, "Finetune like you pretrain" (Goyal, Kumar, Garg, Kolter, Raghunathan, CVPR 2023): ``--method flyp``.

Both CLIP towers and the learned temperature are fine-tuned with CLIP's own pretraining loss: the symmetric
contrastive loss between the images of a batch and one caption per image, the image's class name in a prompt
template. Classification is zero-shot from the fine-tuned text tower: the class embeddings (every template, each
prompt L2-normalised, averaged per class, normalised again, times ``exp(logit_scale)``; as
:mod:`lpft.vision.zeroshot`) score the L2-normalised image embedding.

* **Captions** (documented choice, docs/methods.md "FLYP"): every epoch each training image appears once, with a
  template drawn uniformly per image and epoch from ``(seed, epoch)``, so the draw is the same on every rank and
  after a resume. The official code instead samples rows of the image x template product (one CSV row per pair,
  ``locuslab/FLYP datacreation_scripts/imagenet_csv_creator.py:248-250``) for ``len(train loader)`` steps per
  epoch (``src/models/flyp_loss.py:46, 84``).
* **Negatives.** Every other caption of the batch, also one of the same class (labels ``arange``, as
  ``clip/loss.py:194-208`` without ``ground_labels``, ``flyp_loss.py:103-105``).
* **Temperature.** ``exp(logit_scale)``, trained with every other parameter, weight decay included, not clamped
  (``flyp_loss.py:66-69``; ``clip/model.py:378``).
* **torchrun.** The loss uses the negatives of the whole global (micro-)batch: features are gathered from every
  rank with their gradients, each rank sums the loss of its own pairs, and the engine's scaling makes the update
  that of one process. With ``--grad-accum K`` every accumulation step has its own negatives (a K-times smaller
  contrastive batch), as open_clip's accumulation-free loss would see K separate batches.

Everything else is the engine's (:func:`lpft.vision.engine.train`): checkpoints, resume, precision, selection.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lpft.vision import distributed as D

__all__ = ["FlypCaptions", "FlypLoss", "FlypModel", "build_flyp_model", "clip_backbone_names",
           "contrastive_loss_sum", "gather_pairs", "require_clip", "run_flyp"]


def clip_backbone_names() -> list[str]:
    """The registered CLIP backbones (image and text towers)."""
    from lpft.vision.backbones import list_backbones
    from lpft.vision.config import is_clip_name

    return [b for b in list_backbones() if is_clip_name(b)]


def require_clip(backbone: Any, name: str | None = None) -> None:
    """Raise ValueError unless ``backbone`` is a CLIP backbone (FLYP trains both towers)."""
    if not getattr(backbone, "is_clip", False):
        raise ValueError(f"FLYP fine-tunes CLIP's image and text towers; backbone "
                         f"{name or getattr(backbone, 'name', backbone)!r} is not a CLIP model. Use --backbone "
                         f"with one of: {', '.join(clip_backbone_names())}")


class FlypModel(nn.Module):
    """A whole open_clip model (both towers, ``logit_scale``) that classifies zero-shot from its own text tower.

    ``forward(images)`` gives class logits ``[N, C]`` (fp32): ``normalize(image embedding) @ head.T`` with the head
    from the current text tower. Without gradients (evaluation, BatchNorm re-estimation) the head is computed once
    and cached until a text-tower parameter changes (in place, or moved) or the model enters training mode.
    ``forward(images, texts)`` gives ``(image features, text features, exp(logit_scale))``, both L2-normalised
    (fp32), the contrastive pair the loss needs (state-dict keys ``clip.*``).

    Args:
        clip_model: an open_clip ``CLIP`` (it becomes the submodule ``clip``; pass a copy to keep yours).
        tokenizer: its tokenizer (list of strings -> ``[N, L]`` token tensor).
        classnames: ``C`` class names in label order.
        templates: ``T`` prompt templates with one ``{}``.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]):
        super().__init__()
        from lpft.vision.zeroshot import prompts_for

        if len(classnames) == 0 or len(templates) == 0:
            raise ValueError("FLYP needs at least one class name and one prompt template")
        self.clip = clip_model
        for p in self.clip.parameters():
            p.requires_grad_(True)
        self.classnames, self.templates = [str(c) for c in classnames], list(templates)
        prompts = [p for c in self.classnames for p in prompts_for(c, self.templates)]
        tok = torch.cat([tokenizer(prompts[i:i + 4096]) for i in range(0, len(prompts), 4096)])
        #: ``[C, T, L]`` tokens of every class x template prompt (the captions and the zero-shot head)
        self.prompt_tokens = tok.view(len(self.classnames), len(self.templates), -1)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def from_backbone(cls, backbone, classnames: Sequence[str], templates: Sequence[str]) -> "FlypModel":
        """A FLYP model from a copy of a :class:`~lpft.vision.backbones.ClipBackbone`'s whole CLIP model."""
        require_clip(backbone)
        return cls(copy.deepcopy(backbone.clip_model), backbone.tokenizer, classnames, templates)

    def train(self, mode: bool = True) -> "FlypModel":
        if mode:
            self._cache = None  # training changes the text tower
        return super().train(mode)

    def _text_params(self) -> list[torch.Tensor]:
        return [p for n, p in self.clip.named_parameters() if not n.startswith("visual.")]

    def class_head(self, batch_prompts: int = 1024) -> torch.Tensor:
        """The zero-shot head ``[C, D]`` (fp32) of the current text tower: unit rows times ``exp(logit_scale)``."""
        tokens = self.prompt_tokens
        n_t = tokens.shape[1]
        dev = self.clip.logit_scale.device
        step = max(1, batch_prompts // n_t)
        rows = []
        with torch.autocast(dev.type, enabled=False):  # heads are fp32 under any precision
            for start in range(0, tokens.shape[0], step):
                chunk = tokens[start:start + step]
                emb = self.clip.encode_text(chunk.reshape(-1, chunk.shape[-1]).to(dev)).float()
                emb = F.normalize(emb, dim=-1).view(chunk.shape[0], n_t, -1)
                rows.append(F.normalize(emb.mean(dim=1), dim=-1))
            return torch.cat(rows) * self.clip.logit_scale.exp().float()

    def _head(self) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return self.class_head()
        key = tuple((p.data_ptr(), p._version) for p in self._text_params()) + (str(self.clip.logit_scale.device),)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.class_head())
        return self._cache[1]

    def caption_tokens(self, labels: torch.Tensor, template_idx: torch.Tensor) -> torch.Tensor:
        """Tokens ``[N, L]`` of the captions ``templates[t].format(classnames[y])``."""
        return self.prompt_tokens[labels.cpu(), template_idx.cpu()]

    def forward(self, images: torch.Tensor, texts: torch.Tensor | None = None):
        img = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        if texts is not None:
            txt = F.normalize(self.clip.encode_text(texts).float(), dim=-1)
            return img, txt, self.clip.logit_scale.exp().float()
        head = self._head()
        with torch.autocast(img.device.type, enabled=False):
            return img @ head.T


class FlypCaptions(Dataset):
    """The training split with each image's caption template drawn per epoch: items ``(image, y * T + t)``.

    Args:
        dataset: the training split (``(image, label)`` items; skipped corrupt images pass through).
        num_templates: ``T``.
        seed: the run's seed; the draw of epoch ``e`` is a pure function of ``(seed, e)``.
    """

    def __init__(self, dataset: Dataset, num_templates: int, seed: int):
        self.dataset, self.num_templates, self.seed = dataset, int(num_templates), int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        # its own stream: the engine's shuffling generator is seeded with seed * 1000 + epoch
        g = torch.Generator().manual_seed((self.seed * 1000 + int(epoch)) * 7 + 3)
        self.template = torch.randint(self.num_templates, (len(self.dataset),), generator=g)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from lpft.vision.data.folders import SkippedImage

        item = self.dataset[i]
        if isinstance(item, SkippedImage):
            return item
        return item[0], int(item[1]) * self.num_templates + int(self.template[i])


def gather_pairs(img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every rank's image and text features, in rank order, with gradients to each rank's own rows.

    Returns ``(all_img, all_txt, offset)``: ``offset`` is this rank's first row. Ranks may hold different numbers
    of rows (none included). A differentiable all-reduce of a zero-padded ``[world, max_n, D]`` buffer (gloo and
    NCCL alike): the backward sums every rank's gradient for a row into the rank that owns it. One process: the
    inputs themselves.
    """
    rank, world = D.rank_world()
    if world == 1:
        return img, txt, 0
    from torch.distributed.nn.functional import all_reduce

    n = img.shape[0]
    counts = [int(c) for c in D.all_reduce_sum([float(n if r == rank else 0) for r in range(world)], img.device)]
    m = max(max(counts), 1)
    out = []
    for local in (img, txt):
        padded = torch.cat([local, local.new_zeros(m - n, local.shape[1])])
        stacked = torch.stack([padded if r == rank else torch.zeros_like(padded) for r in range(world)])
        with warnings.catch_warnings():  # its deprecation points to a functional API without autograd
            warnings.simplefilter("ignore", FutureWarning)
            full = all_reduce(stacked).reshape(world * m, -1)
        keep = torch.cat([torch.arange(c, device=full.device) + r * m for r, c in enumerate(counts)])
        out.append(full[keep])
    return out[0], out[1], sum(counts[:rank])


def contrastive_loss_sum(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, *,
                         real: bool = True) -> torch.Tensor:
    """CLIP's symmetric contrastive loss, summed over this rank's pairs (fp32).

    For pair ``i`` of the global batch of ``N`` pairs (all ranks: :func:`gather_pairs`), with ``s = exp(logit
    scale)`` and L2-normalised ``u`` (images), ``v`` (texts):
    ``l_i = (CE(s u_i . v_*, i) + CE(s v_i . u_*, i)) / 2``; the mean of ``l_i`` over ``N`` is CLIP's loss.

    Args:
        img / txt: this rank's ``[n, D]`` normalised features, row ``i`` a pair.
        scale: ``exp(logit_scale)``.
        real: False for a placeholder micro-batch (see :func:`lpft.vision.engine.train`): it contributes no pair.
    """
    with torch.autocast(img.device.type, enabled=False):
        img, txt, scale = img.float(), txt.float(), scale.float()
        n = img.shape[0] if real else 0
        all_img, all_txt, offset = gather_pairs(img[:n], txt[:n])
        target = torch.arange(n, device=img.device) + offset
        loss = (F.cross_entropy(scale * img[:n] @ all_txt.T, target, reduction="sum")
                + F.cross_entropy(scale * txt[:n] @ all_img.T, target, reduction="sum")) / 2
        # every feature and the temperature stay in the graph (DDP needs a gradient for every parameter; the
        # gather's backward is a collective every rank must run)
        return loss + 0.0 * (img.sum() + txt.sum() + scale + all_img.sum() + all_txt.sum())


class FlypLoss:
    """The engine criterion of FLYP: captions for ``y = label * T + t``, then :func:`contrastive_loss_sum`.

    Args:
        prompt_tokens: ``[C, T, L]`` (:attr:`FlypModel.prompt_tokens`).
        captions: the :class:`FlypCaptions` the engine trains on (its epoch is set here).
    """

    def __init__(self, prompt_tokens: torch.Tensor, captions: FlypCaptions):
        self.tokens, self.captions = prompt_tokens, captions

    def set_epoch(self, epoch: int) -> None:
        self.captions.set_epoch(epoch)

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, real: bool = True) -> torch.Tensor:
        n_t = self.tokens.shape[1]
        y = y.cpu()
        texts = self.tokens[y // n_t, y % n_t].to(x.device)
        img, txt, scale = net(x, texts)
        return contrastive_loss_sum(img, txt, scale, real=real)


def templates_of(ctx) -> list[str]:
    """The run's prompt templates, as :func:`lpft.vision.context.zeroshot_weights` chooses them."""
    from lpft.vision.zeroshot import SIMPLE_TEMPLATES, imagenet_templates

    t = ctx.cfg.templates
    return list(imagenet_templates() if t == "imagenet" else SIMPLE_TEMPLATES if t == "simple"
                else ctx.bench.templates)


def build_flyp_model(ctx) -> FlypModel:
    """The zero-shot starting point of FLYP (a copy of the run's pretrained CLIP; ``ctx.backbone`` is untouched).

    Raises:
        ValueError: the run's backbone is not a CLIP model (the message names the CLIP backbones).
    """
    require_clip(ctx.backbone, ctx.cfg.backbone)
    return FlypModel.from_backbone(ctx.backbone, list(ctx.bench.classnames), templates_of(ctx))


def run_flyp(ctx) -> list[dict]:
    """FLYP through the engine; records of the selected epoch on every split, plus the per-epoch history.

    ``history.json`` names the selected checkpoint (``ckpt/best.pt`` or ``ckpt/last.pt``), whose ``model`` is the
    :class:`FlypModel` state dict (both towers).
    """
    from lpft.vision import engine
    from lpft.vision.context import evaluate_model, history_records
    from lpft.vision.tboard import EpochLogger

    model = build_flyp_model(ctx)
    captions = FlypCaptions(ctx.train_set, len(model.templates), ctx.cfg.seed)
    with EpochLogger(ctx.run_dir / "tensorboard" if D.is_main() else None) as log:
        res = engine.train(model, captions, ctx.eval_sets["id_val"], ctx.settings(), device=ctx.device,
                           ckpt_dir=ctx.run_dir / "ckpt", resume=ctx.cfg.resume, progress=ctx.progress,
                           on_epoch_end=log, criterion=FlypLoss(model.prompt_tokens, captions))
    model.load_state_dict(res.best_state)
    ctx.notes["best_epoch"], ctx.notes["history"] = res.best_epoch, res.history
    selected = "best.pt" if ctx.cfg.select_epoch == "best" and res.best_epoch > 0 else "last.pt"
    ctx.write_json("history.json", {"best_epoch": res.best_epoch, "select_epoch": ctx.cfg.select_epoch,
                                    "selected_checkpoint": f"ckpt/{selected}" if res.best_epoch > 0 else None,
                                    "history": res.history})
    return evaluate_model(ctx, model) + history_records(ctx)
