"""Parameter-efficient fine-tuning: LoRA through ``peft`` (this module) and SSF (:mod:`lpft.vision.ssf`).

Both freeze the pretrained backbone, train a few added parameters plus the linear head, and are
:class:`~lpft.vision.engine.TrainHook` objects whose :meth:`merge` turns the trained model back into the
original architecture with the original parameter names (``docs/methods.md``), so WiSE-FT interpolation, soups
and export see an ordinary fine-tuned :class:`~lpft.vision.backbones.Classifier`.

* **LoRA** (Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight ``W0``
  acts as ``W0 + (alpha / r) B A`` with ``A`` (``r x in``, Kaiming-uniform init) and ``B`` (``out x r``, zero
  init) trained, so training starts exactly at the pretrained model. Injection, training-time forward and
  merging are ``peft``'s (``LoraModel``; ``merge_and_unload`` after training).

Targets (``--lora-targets``, comma-separated tokens; names are module names of the Classifier, a token matching a
name equal to it or ending in ``.<token>``, as in ``peft``):

* ``default``: per family. open_clip transformers (``nn.MultiheadAttention``): the attention in-projection
  (q, k, v: the parameter ``<attn>.in_proj_weight``, through peft's ``target_parameters``, which adds ``B A`` to
  the weight only while the attention runs) and the MLP's Linear layers (``c_fc``, ``c_proj``); timm ViTs:
  ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; otherwise every ``Conv2d`` (groups 1).
* ``conv`` / ``linear``: every convolution (groups 1) / Linear layer of the backbone whose forward runs.
* a module name (Linear or convolution), or ``<attn>.in_proj_weight``.

The out-projection of ``nn.MultiheadAttention`` is not adapted: the attention reads ``out_proj.weight`` directly
(its forward never runs, so a LoRA layer there would do nothing), and peft's only route to it (its
``MultiheadAttention`` layer) adds the update to the frozen weights before every forward and subtracts it after,
which changes them by rounding (measured 5e-8 after 20 steps on ``tiny_clip``). Which modules run their forward
is checked with one forward pass of a blank image (:func:`called_modules`); a named target that never runs, or a
grouped convolution (peft cannot merge those), is a ValueError.

Frozen BatchNorm layers run in eval mode (their statistics stay the pretrained ones, as with ``--train-blocks``).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import torch
import torch.nn as nn

from lpft.vision.engine import TrainHook

__all__ = ["AdapterHook", "DEFAULT_LORA_RANK", "LoRA", "PEFT_HINT", "called_modules", "collapse_names",
           "lora_targets", "peft_available", "scope_modules"]

#: peft's ``LoraConfig`` default rank, and the LoRA paper's RoBERTa setting (Hu et al. 2022, App. D, Table 9:
#: r = 8, alpha = 8); alpha defaults to the rank (Sec. 4.1: "we simply set alpha to the first r we try").
DEFAULT_LORA_RANK = 8
PEFT_HINT = 'LoRA needs the peft library: pip install "lpft[lora]" (or pip install peft)'
_VIT_NAMES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # timm VisionTransformer blocks


def peft_available() -> bool:
    """Whether ``peft`` can be imported (checked without importing it: it loads transformers)."""
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):  # a broken install, or peft blocked in sys.modules
        return False


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError(PEFT_HINT) from e
    return peft


# --- what a backbone offers -------------------------------------------------------------------------------
def scope_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules adapters may touch: a Classifier's backbone (``backbone.*``); the head always trains fully."""
    prefix = "backbone." if isinstance(getattr(model, "backbone", None), nn.Module) else ""
    return [(n, m) for n, m in model.named_modules()
            if n and n.startswith(prefix) and not (n == "head" or n.startswith("head."))]


def called_modules(model: nn.Module) -> dict[str, tuple[int, ...]] | None:
    """``{name: output shape}`` of the modules of :func:`scope_modules` whose forward runs on one blank image.

    The image is ``model.backbone.image_size`` square (None when the model does not say: then nothing is
    checked). Eval mode and no gradient, so nothing changes; every module's mode is restored.
    """
    size = getattr(getattr(model, "backbone", None), "image_size", None)
    params = list(model.parameters())
    if size is None or not params:
        return None
    seen: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(_mod, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            seen[name] = tuple(t.shape) if isinstance(t, torch.Tensor) else ()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in scope_modules(model)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, int(size), int(size), device=params[0].device, dtype=params[0].dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return seen


def collapse_names(names) -> str:
    """Names with block indices folded (``...resblocks.<i>.mlp.c_fc``), deduplicated, for error messages."""
    out = list(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".<i>", n) for n in names))
    return ", ".join(out) if out else "(none)"


def _matches(name: str, token: str) -> bool:
    return name == token or name.endswith("." + token)


# --- LoRA targets -----------------------------------------------------------------------------------------
def _lora_candidates(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """``(layers, attentions)``: the Linear / convolution modules peft's LoRA wraps, and the
    ``nn.MultiheadAttention`` modules whose in-projection it can adapt (``<name>.in_proj_weight``)."""
    layers, attn = {}, {}
    for n, m in scope_modules(model):
        if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            attn[n] = m
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            layers[n] = m
    return layers, attn


def _default_targets(layers, attn, called) -> tuple[list[str], list[str]]:
    runs = (lambda n: True) if called is None else (lambda n: n in called)
    live_attn = [n for n in attn if runs(n)]
    if live_attn:  # open_clip transformer blocks: the in-projections, and the block's Linear layers (the MLP)
        blocks = {n.rpartition(".")[0] for n in live_attn}
        mlp = [n for n, m in layers.items() if isinstance(m, nn.Linear) and runs(n)
               and any(n.startswith(b + ".") for b in blocks) and not any(n.startswith(a + ".") for a in attn)]
        return mlp, [f"{n}.in_proj_weight" for n in live_attn]
    vit = [n for n, m in layers.items() if isinstance(m, nn.Linear) and runs(n) and n.endswith(_VIT_NAMES)]
    if vit:
        return vit, []
    return [n for n, m in layers.items() if isinstance(m, nn.Conv2d) and m.groups == 1 and runs(n)], []


def lora_targets(model: nn.Module, spec: str | None = None) -> tuple[list[str], list[str]]:
    """The modules and parameters LoRA adapts in ``model`` under ``spec`` (module docstring).

    Args:
        model: a :class:`~lpft.vision.backbones.Classifier` (or any module; then every submodule but ``head``).
        spec: comma-separated tokens (``default``, ``conv``, ``linear``, names); None: ``default``.
    Returns:
        ``(module names, parameter names)``, full names in model order, for ``peft.LoraConfig``'s
        ``target_modules`` and ``target_parameters``.
    Raises:
        ValueError: a token that matches nothing (the message lists what is available), a target whose forward
            never runs, a grouped convolution, or a spec that selects nothing.
    """
    layers, attn = _lora_candidates(model)
    called = called_modules(model)
    runs = (lambda n: True) if called is None else (lambda n: n in called)
    params = {f"{n}.in_proj_weight": n for n in attn}
    available = collapse_names([n for n in layers if runs(n)] + [p for p, n in params.items() if runs(n)])
    tokens = [t.strip() for t in (spec or "default").split(",") if t.strip()]
    if not tokens:
        raise ValueError(f"--lora-targets is empty; expected default, conv, linear or module names: {available}")
    mods: set[str] = set()
    pars: set[str] = set()
    for tok in tokens:
        if tok == "default":
            m, p = _default_targets(layers, attn, called)
            if not m and not p:
                raise ValueError(f"--lora-targets default: this backbone has no default LoRA targets (no attention, "
                                 f"timm ViT block or Conv2d layer); name modules instead: {available}")
        elif tok in ("conv", "linear"):
            kind = nn.Linear if tok == "linear" else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
            m = [n for n, x in layers.items() if isinstance(x, kind) and runs(n) and getattr(x, "groups", 1) == 1]
            p = []
            if not m:
                raise ValueError(f"--lora-targets {tok}: the backbone has no {tok} layer that runs; available: "
                                 f"{available}")
        else:
            m = [n for n in layers if _matches(n, tok)]
            p = [q for q in params if _matches(q, tok)]
            if not m and not p:
                raise ValueError(f"--lora-targets: {tok!r} matches no Linear / convolution module or attention "
                                 f"in-projection of the backbone; available: {available}")
            idle = [n for n in m if not runs(n)] + [q for q in p if not runs(params[q])]
            if idle:
                raise ValueError(
                    f"--lora-targets: {tok!r} matches {collapse_names(idle)}, whose forward never runs (the parent "
                    f"reads the weight directly, e.g. nn.MultiheadAttention's out_proj), so LoRA there would do "
                    f"nothing; for attention name <attn>.in_proj_weight. Available: {available}")
            grouped = [n for n in m if getattr(layers[n], "groups", 1) > 1]
            if grouped:
                raise ValueError(f"--lora-targets: {collapse_names(grouped)} are grouped convolutions, which peft "
                                 f"cannot merge into the base weights; choose others: {available}")
        mods.update(m)
        pars.update(p)
    order = [n for n, _ in model.named_modules()]
    pos = {n: i for i, n in enumerate(order)}
    return sorted(mods, key=pos.__getitem__), sorted(pars, key=lambda q: pos[params[q]])


# --- hooks ----------------------------------------------------------------------------------------------------
class AdapterHook(TrainHook):
    """What LoRA and SSF share: the backbone frozen (requires_grad restored by :meth:`merge`), frozen BatchNorm
    layers in eval mode, and a summary (targets, trainable parameters) for ``history.json``."""

    name = "adapter"

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.frozen_bn: list[str] = []  # module names (under torchrun the modules themselves are replaced)
        self.trainable = 0
        self.total = 0
        self._grad: dict[str, bool] = {}

    def _record(self, model: nn.Module) -> None:
        self._grad = {n: p.requires_grad for n, p in model.named_parameters()}

    def _finish_setup(self, model: nn.Module, trainable: set[str]) -> None:
        """Train exactly ``trainable`` and the head; note the frozen BatchNorm layers and the counts."""
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable or n == "head" or n.startswith("head."))
        self.frozen_bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                          and not any(p.requires_grad for p in m.parameters(recurse=False))]
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.total = sum(p.numel() for p in model.parameters())

    def _restore(self, model: nn.Module) -> None:
        """requires_grad as before setup, and each module's parameters in their original order (peft re-registers
        a parameter it wrapped, which appends it: the state dict would list the same keys in another order)."""
        rank = {n: i for i, n in enumerate(self._grad)}
        for prefix, m in model.named_modules():
            full = {k: f"{prefix}.{k}" if prefix else k for k, v in m._parameters.items() if v is not None}
            if not full or not all(n in rank for n in full.values()):
                continue
            key = lambda kv: rank.get(full.get(kv[0], ""), -1)  # noqa: E731 (None entries keep their place first)
            items = sorted(m._parameters.items(), key=key)
            if [k for k, _ in items] != list(m._parameters):
                m._parameters.clear()
                m._parameters.update(items)
        for n, p in model.named_parameters():
            if n in self._grad:
                p.requires_grad_(self._grad[n])

    def train_mode(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in self.frozen_bn:
            modules[name].eval()

    def summary(self) -> dict[str, Any]:
        """What was adapted, for ``history.json``: targets (block indices folded) and parameter counts."""
        return {"targets": collapse_names(self.targets), "trainable_params": self.trainable,
                "params_while_training": self.total}

    def state_dict(self) -> dict[str, Any]:
        return {"targets": list(self.targets)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and list(state.get("targets", self.targets)) != self.targets:
            raise ValueError(f"the checkpoint's {self.name} targets differ from this run's ({len(state['targets'])} "
                             f"vs {len(self.targets)} targets): resume with the same backbone and options")

    def merge(self, model: nn.Module) -> nn.Module:  # pragma: no cover - implemented by the subclasses
        raise NotImplementedError


class LoRA(AdapterHook):
    """LoRA through ``peft`` (module docstring), as a :class:`~lpft.vision.engine.TrainHook`.

    Args:
        rank: the rank ``r`` of every adapter (>= 1).
        alpha: the scale: the update is ``(alpha / r) B A`` (> 0; None: ``rank``).
        targets: the ``--lora-targets`` spec (None: ``default``).
        seed: seeds the adapters' initialisation (the global RNG is left as it was).
    """

    name = "lora"

    def __init__(self, rank: int, alpha: float | None = None, targets: str | None = None, seed: int = 0):
        super().__init__()
        if isinstance(rank, bool) or int(rank) != rank or rank < 1:
            raise ValueError(f"--lora-rank must be a positive integer, got {rank!r}")
        alpha = float(rank) if alpha is None else float(alpha)
        if not alpha > 0:
            raise ValueError(f"--lora-alpha must be > 0, got {alpha}")
        self.rank, self.alpha, self.spec, self.seed = int(rank), alpha, targets, int(seed)
        self._tuner = None

    def setup(self, model: nn.Module) -> None:
        peft = _peft()
        self._record(model)
        modules, params = lora_targets(model, self.spec)
        config = peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, bias="none",
                                 target_modules=modules, target_parameters=params or None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._tuner = peft.LoraModel(model, config, "default")  # injects into ``model`` in place
        adapters = {n for n, p in model.named_parameters() if p.requires_grad}  # peft froze everything else
        if not adapters:
            raise RuntimeError("peft injected no LoRA parameter")  # pragma: no cover - lora_targets checked
        self.targets = modules + params
        self._finish_setup(model, adapters)

    def merge(self, model: nn.Module) -> nn.Module:
        """Merge ``W0 + (alpha / r) B A`` into the weights and remove the adapters, in place: ``model`` gets its
        original modules and parameter names back (requires_grad as before :meth:`setup`). Returns ``model``.

        Raises:
            ValueError: ``model`` is not the model this hook set up.
        """
        if self._tuner is None or self._tuner.model is not model:
            raise ValueError("LoRA.merge takes the model this hook set up (and merges it once)")
        self._tuner.merge_and_unload(safe_merge=True)  # safe_merge: a non-finite merged weight is an error
        self._tuner = None
        self._restore(model)
        return model

    def summary(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, **super().summary()}
