"""Which parameters fine-tuning trains: freeze-embed and surgical fine-tuning (``docs/methods.md``).

* **Freeze-embed** (Kumar et al. 2022b, "How to fine-tune vision models with SGD"): the patch / stem embedding
  keeps its pretrained weights, everything else trains.
* **Surgical fine-tuning** (Lee et al., ICLR 2023): only a contiguous part of the network trains, e.g. the first
  blocks for input-level shifts or the last ones for output-level shifts.

A :class:`~lpft.vision.backbones.Classifier` is cut into groups by the structure of its backbone
(:func:`layout`): ``embed`` (the stem / patch embedding), the sequence of residual or transformer ``blocks``
split into ``first`` / ``middle`` / ``last`` thirds (block ``i`` of ``n`` goes to third
``floor(3 (i + 1/2) / n)``, so 12 blocks split 4/4/4 and 16 split 5/6/5), the layers after the blocks (final
norm, projection, attention pool: part of ``last``), and ``head``. ``first`` includes ``embed``.

A spec is a comma-separated list of tokens: a group name (``all``, ``embed``, ``first``, ``middle``, ``last``,
``head``) or a parameter-name prefix of the Classifier (``backbone.visual.transformer.resblocks.11``; a prefix
matches a name equal to it or continuing with ``.``). A token starting with ``-`` excludes what it names.
The head trains unless excluded (``-head``). Frozen parameters get ``requires_grad_(False)`` before the
optimizer is built (DDP then leaves them out), and a BatchNorm layer whose parameters are all frozen runs in
eval mode, so its running statistics stay the pretrained ones too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from lpft.vision.engine import TrainHook

__all__ = ["GROUPS", "Freeze", "Layout", "available_prefixes", "frozen_batchnorm", "layout", "trainable_names"]

GROUPS = ("all", "embed", "first", "middle", "last", "head")


@dataclass
class Layout:
    """A backbone's parameter-name prefixes (Classifier names), in network order."""

    kind: str
    embed: list[str]
    blocks: list[list[str]]  # each block may span several prefixes (a conv and its BatchNorm)
    post: list[str] = field(default_factory=list)  # after the blocks: final norm, projection, pooling

    def thirds(self) -> tuple[list[str], list[str], list[str]]:
        parts: tuple[list[str], list[str], list[str]] = ([], [], [])
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            parts[min(2, int(3 * (i + 0.5) / n))].extend(block)
        return parts

    def units(self) -> list[str]:
        return [*self.embed, *(p for b in self.blocks for p in b), *self.post]


def _children(names: list[str], prefix: str) -> list[str]:
    """The distinct next name components under ``prefix`` (``prefix.<child>.*``), in order of appearance."""
    out: list[str] = []
    for n in names:
        if n.startswith(prefix + "."):
            child = n[len(prefix) + 1:].split(".")[0]
            if child not in out:
                out.append(child)
    return out


def _present(names: list[str], prefixes: list[str]) -> list[str]:
    return [p for p in prefixes if any(_matches(n, p) for n in names)]


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layout(model: nn.Module) -> Layout | None:
    """The groups of a Classifier's backbone, by its structure; None for an architecture without a layout.

    CLIP ViT (open_clip ``VisionTransformer``): embed ``conv1, class_embedding, positional_embedding, ln_pre``,
    blocks ``transformer.resblocks.<i>``, then ``ln_post, proj``. CLIP ResNet (``ModifiedResNet``): embed the
    three-convolution stem, blocks ``layer<s>.<j>``, then ``attnpool``. torchvision ResNet: embed ``conv1, bn1``,
    blocks ``layer<s>.<j>``. timm EfficientNet: embed ``conv_stem, bn1``, blocks ``blocks.<s>.<j>``, then
    ``conv_head, bn2``. ``tiny_cnn``: embed the first conv + BatchNorm, one block (the second pair). The lab's
    ``LabResNet`` (``digits_simclr``): embed the first conv + GroupNorm, blocks: the 8x8 residual block, then each
    stride-2 stage (its conv, norm and residual block), so first / middle / last are one resolution each.
    """
    names = [n for n, _ in model.named_parameters()]
    v, net = "backbone.visual", "backbone.net"
    if f"{v}.class_embedding" in names:
        blocks = [[f"{v}.transformer.resblocks.{i}"] for i in _children(names, f"{v}.transformer.resblocks")]
        embed = [f"{v}.conv1", f"{v}.class_embedding", f"{v}.positional_embedding", f"{v}.ln_pre"]
        return Layout("clip_vit", _present(names, embed), blocks, _present(names, [f"{v}.ln_post", f"{v}.proj"]))
    for root, kind in ((v, "clip_resnet"), (net, "resnet")):
        if any(n.startswith(f"{root}.layer1.") for n in names):
            blocks = [[f"{root}.{s}.{j}"] for s in _children(names, root) if s.startswith("layer")
                      for j in _children(names, f"{root}.{s}")]
            stem = [f"{root}.{c}{i}" for i in ("1", "2", "3") for c in ("conv", "bn")]
            return Layout(kind, _present(names, stem), blocks, _present(names, [f"{root}.attnpool"]))
    if f"{net}.conv_stem.weight" in names:
        blocks = [[f"{net}.blocks.{s}.{j}"] for s in _children(names, f"{net}.blocks")
                  for j in _children(names, f"{net}.blocks.{s}")]
        post = _present(names, [f"{net}.conv_head", f"{net}.bn2"])
        return Layout("efficientnet", _present(names, [f"{net}.conv_stem", f"{net}.bn1"]), blocks, post)
    body = _children(names, f"{net}.body")
    if body == ["0", "1", "3", "4"]:  # TinyCNN: conv-BN-ReLU, conv-BN-ReLU
        return Layout("tiny_cnn", [f"{net}.body.0", f"{net}.body.1"], [[f"{net}.body.3", f"{net}.body.4"]])
    if body == ["0", "1", "2"] and f"{net}.body.0.3.conv1.weight" in names:  # the lab's LabResNet: 3 stages
        # each stage: conv (0) + GroupNorm (1) + ReLU, then a residual block (3); the first conv is the stem
        stages = [f"{net}.body.{s}" for s in body]
        blocks = [[f"{stages[0]}.3"], [f"{stages[1]}.0", f"{stages[1]}.1", f"{stages[1]}.3"],
                  [f"{stages[2]}.0", f"{stages[2]}.1", f"{stages[2]}.3"]]
        return Layout("lab_resnet", [f"{stages[0]}.0", f"{stages[0]}.1"], blocks)
    return None


def _groups(lay: Layout | None) -> dict[str, list[str]]:
    if lay is None:
        return {"all": ["backbone"], "head": ["head"]}
    first, middle, last = lay.thirds()
    return {"all": ["backbone"], "embed": lay.embed, "first": lay.embed + first, "middle": middle,
            "last": last + lay.post, "head": ["head"]}


def available_prefixes(model: nn.Module) -> str:
    """What a spec may name for ``model``: the groups and the top-level prefixes, for error messages."""
    lay = layout(model)
    names = [n for n, _ in model.named_parameters()]
    if lay is None:
        units = list(dict.fromkeys("head" if _matches(n, "head") else ".".join(n.split(".")[:4]) for n in names))
        arch = "this backbone has no block layout (only 'all' and 'head' are groups)"
    else:
        units, arch = lay.units() + ["head"], f"layout {lay.kind}"
    groups = [g for g, ps in _groups(lay).items() if ps]
    return f"groups {', '.join(groups)} ({arch}); prefixes: {', '.join(units)}"


def trainable_names(model: nn.Module, spec: str | None, freeze_embed: bool = False) -> list[str]:
    """The parameter names of ``model`` that fine-tuning trains under ``spec`` and ``freeze_embed``.

    Args:
        model: a :class:`~lpft.vision.backbones.Classifier` (parameters named ``backbone.*`` and ``head.*``).
        spec: comma-separated groups / prefixes, ``-`` excluding (module docstring); None or ``"all"``: all.
        freeze_embed: also exclude the ``embed`` group.
    Returns:
        the names, in ``model.named_parameters()`` order.
    Raises:
        ValueError: a token or prefix that matches no parameter (the message lists the groups and prefixes),
            ``freeze_embed`` on a backbone without a layout, or a spec that leaves nothing to train.
    """
    names = [n for n, _ in model.named_parameters()]
    lay = layout(model)
    groups = _groups(lay)
    tokens = [t.strip() for t in (spec or "all").split(",") if t.strip()]
    if not tokens:
        raise ValueError(f"--train-blocks is empty; expected {available_prefixes(model)}")
    include: set[str] = set()
    exclude: set[str] = set()
    for tok in tokens:
        neg = tok.startswith("-")
        key = tok[1:].strip() if neg else tok
        prefixes = groups.get(key, [key])
        hit = {n for n in names if any(_matches(n, p) for p in prefixes)}
        if not hit:
            what = f"group {key!r}" if key in GROUPS else f"prefix {key!r}"
            raise ValueError(f"--train-blocks: {what} matches no parameter of this model; expected "
                             f"{available_prefixes(model)}")
        (exclude if neg else include).update(hit)
    if not any(not t.startswith("-") for t in tokens):  # only exclusions: start from everything
        include = set(names)
    if not any(t.lstrip("-").strip() == "head" and t.startswith("-") for t in tokens):
        include |= {n for n in names if _matches(n, "head")}  # the head trains unless explicitly excluded
    if freeze_embed:
        if lay is None or not lay.embed:
            raise ValueError(f"--freeze-embed: no embedding is defined for this backbone; name the stem's "
                             f"prefixes with --train-blocks -PREFIX instead ({available_prefixes(model)})")
        exclude |= {n for n in names if any(_matches(n, p) for p in lay.embed)}
    chosen = [n for n in names if n in include and n not in exclude]
    if not chosen:
        raise ValueError(f"--train-blocks {spec!r} leaves no parameter to train")
    return chosen


def frozen_batchnorm(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules whose affine parameters are all frozen (``requires_grad`` False)."""
    out = []
    for name, m in model.named_modules():
        ps = list(m.parameters(recurse=False))  # its own affine pair, not what an adapter nests inside it
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and ps and not any(p.requires_grad for p in ps):
            out.append(name)
    return out


class Freeze(TrainHook):
    """Freeze every parameter outside :func:`trainable_names` (a :class:`~lpft.vision.engine.TrainHook`).

    Args:
        spec: the ``--train-blocks`` spec (None: everything).
        freeze_embed: also freeze the embedding (``--freeze-embed``).
    """

    name = "freeze"

    def __init__(self, spec: str | None = None, freeze_embed: bool = False):
        self.spec, self.freeze_embed = spec, bool(freeze_embed)
        self.trained: list[str] = []
        self.frozen_bn: list[str] = []  # module names (under torchrun the modules themselves are replaced)

    def setup(self, model: nn.Module) -> None:
        self.trained = trainable_names(model, self.spec, self.freeze_embed)
        keep = set(self.trained)
        for n, p in model.named_parameters():
            if n not in keep:
                p.requires_grad_(False)
        # a BatchNorm layer whose affine parameters are frozen is frozen entirely (statistics too)
        self.frozen_bn = frozen_batchnorm(model)

    def train_mode(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in self.frozen_bn:
            modules[name].eval()

    def state_dict(self) -> dict[str, Any]:
        return {"trained": list(self.trained)}
