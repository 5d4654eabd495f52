"""SSF: scaling and shifting the features of a frozen backbone (``docs/methods.md``).

Lian, Zhou, Feng, Wang (NeurIPS 2022), "Scaling & Shifting Your Features: A New Baseline for Efficient Model
Tuning": after an operation with output ``y`` (channels ``C``) the model computes ``gamma * y + beta`` with
learned ``gamma, beta in R^C``; the backbone is frozen, SSF parameters and the head train. Both are linear in
``y``, so after training they fold into the operation (the paper's re-parameterisation):
``W' = diag(gamma) W, b' = gamma * b + beta`` for a Linear layer or convolution (output channels first) and
``weight' = gamma * weight, bias' = gamma * bias + beta`` for an affine norm layer. :meth:`SSF.merge` does that
and removes the SSF modules: the model gets its original architecture and names back and gives the same outputs
(up to float rounding).

Where SSF goes (every backbone module whose forward runs on a probe image, :func:`lpft.vision.adapters.called_modules`):

* Linear layers and convolutions with a bias; affine LayerNorm (one normalised dimension), GroupNorm and
  BatchNorm layers. A norm with a fused activation (timm's ``BatchNormAct2d``: norm, ``drop``, ``act``) gets its
  SSF right after the norm, before the activation (it sits in the ``drop`` slot), so it still folds.
* ``nn.MultiheadAttention`` (open_clip): after the out-projection (folded into ``out_proj``) and after the
  in-projection q, k, v (the official code's SSF after ``qkv``): a parametrisation of ``in_proj_weight`` /
  ``in_proj_bias`` (``torch.nn.utils.parametrize``), since the attention computes it inside one fused call.
* Not: Linear layers and convolutions without a bias (the shift would need one). In the backbones here those are
  always followed by a norm layer (ResNet / EfficientNet / lab convolutions, CLIP's patch embedding before
  ``ln_pre``), whose SSF scales and shifts the same channels: for BatchNorm in eval mode (a per-channel affine map)
  that is exactly the same family of functions; for GroupNorm / LayerNorm it is the SSF after the norm only.

SSF starts at the identity (``gamma = 1, beta = 0``), so fine-tuning starts exactly at the pretrained model (LP-FT:
at the LP model); the official code draws ``gamma ~ N(1, 0.02^2), beta ~ N(0, 0.02^2)`` (dongzelian/SSF,
``models/vision_transformer.py``, ``init_ssf_scale_shift``). Frozen BatchNorm layers run in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from lpft.vision.adapters import AdapterHook, called_modules, scope_modules

__all__ = ["SSF", "ScaleShift", "fold_ssf", "ssf_sites"]

_BN = nn.modules.batchnorm._BatchNorm


class ScaleShift(nn.Module):
    """``op`` followed by ``y * scale + shift`` over the channel axis ``dim`` of its (first) output; with
    ``before=True`` the scale and shift come first (the slot inside a fused norm layer). Attributes the wrapper
    lacks are read from ``op`` (``.weight``, ``.batch_first``, ...).

    Args:
        op: the wrapped module.
        channels: ``C``.
        dim: the channel axis of the output (``-1`` for Linear / LayerNorm / attention, ``1`` for conv / norms).
        before: apply SSF to the input of ``op`` instead of its output.
        qkv: also scale and shift the in-projection of ``op`` (an ``nn.MultiheadAttention``).
        like: a tensor whose device and dtype the parameters take (default: ``op``'s first parameter).
    """

    def __init__(self, op: nn.Module, channels: int, dim: int, *, before: bool = False, qkv: bool = False,
                 like: torch.Tensor | None = None):
        super().__init__()
        ref = like if like is not None else next(op.parameters(), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.op, self.dim, self.before = op, int(dim), bool(before)
        self.scale = nn.Parameter(torch.ones(int(channels), **kw))
        self.shift = nn.Parameter(torch.zeros(int(channels), **kw))
        if qkv:
            w = op.in_proj_weight
            self.qkv_scale = nn.Parameter(torch.ones(w.shape[0], device=w.device, dtype=w.dtype))
            self.qkv_shift = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
            parametrize.register_parametrization(op, "in_proj_weight", _RowScale(self))
            parametrize.register_parametrization(op, "in_proj_bias", _ScaleShiftVector(self))

    def _ssf(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.dim] = -1
        return x * self.scale.view(shape) + self.shift.view(shape)

    def forward(self, *args: Any, **kwargs: Any):
        if self.before:
            return self.op(self._ssf(args[0]), *args[1:], **kwargs)
        out = self.op(*args, **kwargs)
        if isinstance(out, tuple):  # nn.MultiheadAttention: (output, weights)
            return (self._ssf(out[0]), *out[1:])
        return self._ssf(out)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            op = self.__dict__.get("_modules", {}).get("op")
            if op is None or name.startswith("_"):  # never private or special names (copy's __deepcopy__ ...)
                raise
            return getattr(op, name)


class _RowScale(nn.Module):
    """Parametrisation ``W -> diag(qkv_scale) W`` (the owner's parameter; no parameter of its own)."""

    def __init__(self, owner: ScaleShift):
        super().__init__()
        self.__dict__["owner"] = owner  # not a submodule: the owner holds the parameters

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.owner.qkv_scale.unsqueeze(1)


class _ScaleShiftVector(_RowScale):
    """Parametrisation ``b -> qkv_scale * b + qkv_shift``."""

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return b * self.owner.qkv_scale + self.owner.qkv_shift


def _channels(m: nn.Module) -> tuple[str, int, int] | None:
    """``(kind, C, preferred channel axis)`` of a module SSF can follow, or None."""
    if isinstance(m, nn.MultiheadAttention):
        return ("attention", m.embed_dim, -1) if m.out_proj.bias is not None else None
    if isinstance(m, nn.Linear):
        return ("linear", m.out_features, -1) if m.bias is not None else None
    if isinstance(m, nn.modules.conv._ConvNd):
        return ("conv", m.out_channels, 1) if m.bias is not None and not m.transposed else None
    if getattr(m, "weight", None) is None or getattr(m, "bias", None) is None:
        return None  # a norm without affine parameters (or without a bias) has nothing to fold into
    if isinstance(m, nn.LayerNorm):
        return ("norm", m.normalized_shape[0], -1) if len(m.normalized_shape) == 1 else None
    if isinstance(m, nn.GroupNorm):
        return "norm", m.num_channels, 1
    if isinstance(m, _BN):
        return "norm", m.num_features, 1
    return None


def _fused(m: nn.Module) -> bool:
    """A norm layer with its activation inside (timm's ``BatchNormAct2d`` / ``GroupNormAct``: norm, drop, act)."""
    return isinstance(getattr(m, "drop", None), nn.Module) and isinstance(getattr(m, "act", None), nn.Module)


def ssf_sites(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """``{module name: (kind, channels, channel axis)}`` of every module SSF follows in ``model`` (module
    docstring); the axis is checked against the output of a probe forward pass."""
    called = called_modules(model)
    sites = {}
    for n, m in scope_modules(model):
        spec = _channels(m)
        if spec is None or (called is not None and n not in called):
            continue
        kind, c, dim = spec
        if called is not None and len(shape := called[n]) > 1:
            alt = 1 if dim == -1 else -1
            dim = dim if shape[dim] == c else alt if shape[alt] == c else None
        if dim is not None:
            sites[n] = (kind, c, dim)
    return sites


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, last = name.rpartition(".")
    return (model.get_submodule(head) if head else model), last


@torch.no_grad()
def _fold_(weight: torch.Tensor, bias: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> None:
    """In place: ``weight <- g * weight`` along axis 0, ``bias <- g * bias + beta`` (computed in float64)."""
    g64 = g.detach().double()
    weight.copy_((weight.double() * g64.view(-1, *[1] * (weight.ndim - 1))).to(weight.dtype))
    bias.copy_((bias.double() * g64 + beta.detach().double()).to(bias.dtype))


def fold_ssf(model: nn.Module) -> nn.Module:
    """Fold every :class:`ScaleShift` of ``model`` into the weights it follows and remove it, in place.

    Returns:
        ``model``, with its original modules and parameter names.
    """
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, ScaleShift)]
    for name, w in sorted(wrappers, key=lambda nm: -nm[0].count(".")):  # innermost first
        parent, attr = _parent(model, name)
        op = w.op
        if w.before:  # the slot of a fused norm layer: SSF right after the norm's affine map
            _fold_(parent.weight, parent.bias, w.scale, w.shift)
        elif isinstance(op, nn.MultiheadAttention):
            _fold_(op.out_proj.weight, op.out_proj.bias, w.scale, w.shift)
            if parametrize.is_parametrized(op, "in_proj_weight"):
                for p in ("in_proj_weight", "in_proj_bias"):
                    parametrize.remove_parametrizations(op, p, leave_parametrized=False)
                _fold_(op.in_proj_weight, op.in_proj_bias, w.qkv_scale, w.qkv_shift)
        else:
            _fold_(op.weight, op.bias, w.scale, w.shift)
        setattr(parent, attr, op)
    return model


class SSF(AdapterHook):
    """SSF (module docstring) as a :class:`~lpft.vision.engine.TrainHook`: :meth:`setup` wraps every site of
    :func:`ssf_sites` and freezes the backbone; :meth:`merge` folds SSF into the weights."""

    name = "ssf"

    def __init__(self) -> None:
        super().__init__()
        self._model_id: int | None = None

    def setup(self, model: nn.Module) -> None:
        self._record(model)
        sites = ssf_sites(model)
        if not sites:
            raise ValueError("--ssf: the backbone has no Linear layer or convolution with a bias, affine norm layer "
                             "or attention whose forward runs: nothing for SSF to follow")
        for name in sorted(sites, key=lambda n: -n.count(".")):  # innermost first: outer names stay valid
            kind, c, dim = sites[name]
            parent, attr = _parent(model, name)
            op = getattr(parent, attr)
            if kind == "norm" and _fused(op):
                op.drop = ScaleShift(op.drop, c, dim, before=True, like=op.weight)
            else:
                qkv = kind == "attention" and op.in_proj_weight is not None and op.in_proj_bias is not None
                setattr(parent, attr, ScaleShift(op, c, dim, qkv=qkv))
        trainable = {n for n, _ in model.named_parameters()
                     if n.rpartition(".")[2] in ("scale", "shift", "qkv_scale", "qkv_shift")
                     and isinstance(model.get_submodule(n.rpartition(".")[0]), ScaleShift)}
        self.targets = sorted(sites)
        self._model_id = id(model)
        self._finish_setup(model, trainable)

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold SSF into the weights (:func:`fold_ssf`), in place, and restore requires_grad; returns ``model``.

        Raises:
            ValueError: ``model`` is not the model this hook set up.
        """
        if self._model_id != id(model):
            raise ValueError("SSF.merge takes the model this hook set up (and folds it once)")
        fold_ssf(model)
        self._model_id = None
        self._restore(model)
        return model
