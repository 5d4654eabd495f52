"""Zero-shot classification heads from CLIP's text tower (Radford et al. 2021; WiSE-FT, Wortsman et al. 2022).

For each class, every prompt ``template.format(classname)`` is encoded by the text tower; each prompt
embedding is L2-normalised, the class's prompts are averaged, and the average is normalised again. The rows
are multiplied by CLIP's temperature ``logit_scale`` (``exp`` of the learned log-scale, 100 for OpenAI
CLIP), so that ``head(normalize(image_features))`` reproduces CLIP's zero-shot logits. The bias is zero.
This is the head WiSE-FT fine-tunes from ("we scale the zero-shot classifier weights by the temperature
parameter of the pre-trained CLIP model at initialization", App. D.2).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from lpft.vision.progress import tqdm

__all__ = ["SIMPLE_TEMPLATES", "imagenet_templates", "prompts_for", "zeroshot_head"]

#: A few short generic prompts (``{}`` = class name), for benchmarks without curated templates.
SIMPLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "an image of a {}.",
    "a picture of a {}.",
)


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates used by CLIP and WiSE-FT, as ``str.format`` strings.

    Taken from open_clip's ``OPENAI_IMAGENET_TEMPLATES`` (callables there), rendered with ``"{}"``.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") if callable(t) else str(t) for t in OPENAI_IMAGENET_TEMPLATES]


def prompts_for(classname: str, templates: Sequence[str | Callable[[str], str]]) -> list[str]:
    """All prompts for one class: ``template.format(classname)`` (or ``template(classname)`` if callable)."""
    return [t(classname) if callable(t) else t.format(classname) for t in templates]


def _check_inputs(backbone, classnames, templates) -> None:
    if not getattr(backbone, "is_clip", False):
        raise ValueError(
            f"zero-shot heads need a CLIP backbone (is_clip=True); got {getattr(backbone, 'name', backbone)!r}"
        )
    if not getattr(backbone, "feature_norm", True):
        raise ValueError(
            f"zero-shot heads are defined over L2-normalised image features (CLIP, WiSE-FT), but backbone "
            f"{getattr(backbone, 'name', backbone)!r} has feature_norm=False; set backbone.feature_norm = True "
            f"(create_backbone(..., feature_norm=True))"
        )
    if isinstance(classnames, str) or len(classnames) == 0:
        raise ValueError("classnames must be a non-empty sequence of strings")
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("templates must be a non-empty sequence of format strings such as 'a photo of a {}.'")
    for t in templates:
        if not callable(t) and (not isinstance(t, str) or "{}" not in t):
            raise ValueError(f"each template must be a string with one '{{}}' for the class name; got {t!r}")


@torch.no_grad()
def zeroshot_head(
    backbone,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    device: torch.device | str | None = None,
    batch_classes: int = 16,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build CLIP's zero-shot linear head over L2-normalised image features.

    Args:
        backbone: a CLIP backbone (:class:`~lpft.vision.backbones.ClipBackbone`, ``is_clip``) with
            ``feature_norm`` on: the head is defined over L2-normalised image features.
        classnames: ``C`` class names, in label order.
        templates: prompt templates with one ``{}`` (or callables ``classname -> prompt``).
        device: where to run the text tower; default: the device of the backbone's image tower. Only the
            text side is moved there, for the call, and moved back afterwards.
        batch_classes: how many classes' prompts are encoded per forward pass.
        progress: show a tqdm bar over classes.

    Raises:
        ValueError: not a CLIP backbone, ``feature_norm`` off, or bad class names / templates.

    Returns:
        ``(weight [C, D], bias [C])`` as float32 CPU tensors: each weight row is a unit vector times
        ``backbone.logit_scale``; the bias is zero.
    """
    _check_inputs(backbone, classnames, templates)
    if int(batch_classes) < 1:
        raise ValueError(f"batch_classes must be >= 1, got {batch_classes!r}")
    n_t = len(templates)
    rows: list[torch.Tensor] = []
    # Only the text side moves to ``device`` (and back afterwards), in eval mode; modes are restored.
    with backbone.text_tower(device) as model:
        dev = model.logit_scale.device
        bar = tqdm(total=len(classnames), desc="zero-shot head", unit="class", disable=not progress)
        for start in range(0, len(classnames), int(batch_classes)):
            chunk = list(classnames[start:start + int(batch_classes)])
            texts = [p for c in chunk for p in prompts_for(c, templates)]
            tokens = backbone.tokenizer(texts).to(dev)
            emb = model.encode_text(tokens).float()              # [len(chunk) * T, D]
            emb = F.normalize(emb, dim=-1).view(len(chunk), n_t, -1)
            rows.append(F.normalize(emb.mean(dim=1), dim=-1).cpu())  # [len(chunk), D]
            bar.update(len(chunk))
        bar.close()
    weight = torch.cat(rows, dim=0) * float(backbone.logit_scale)
    bias = torch.zeros(weight.shape[0], dtype=torch.float32)
    return weight.float().contiguous(), bias
