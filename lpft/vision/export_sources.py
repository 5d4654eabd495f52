"""The run kinds :mod:`lpft.vision.export` rebuilds beyond one network on its backbone: model soups, FLYP runs and
WiSE-FT of any finished run (``--method wiseft --wiseft-from RUN``).

* **Soups** (``python -m lpft.vision.soup``): the soup's own weights file, a
  :class:`~lpft.vision.backbones.Classifier` state dict (``model.pt``; a ``--kind both`` soup holds
  ``model_uniform.pt`` and ``model_greedy.pt``, so the variant must be chosen), on the ingredients' pretrained
  backbone (their common ``config.json`` fields, :func:`run_config`).
* **FLYP** (:mod:`lpft.vision.flyp`): the selected checkpoint holds the whole CLIP model (``clip.*``, both towers
  fine-tuned); its classifier is the zero-shot head of the fine-tuned text tower (every template, unit rows times
  ``exp(logit_scale)``, no bias) on the L2-normalised image embedding. It becomes a Classifier whose backbone
  holds both fine-tuned towers, so that the open_clip export carries the fine-tuned text tower and the head file
  holds that zero-shot head (:func:`flyp_classifier`).
* **WiSE-FT of any run** (:mod:`lpft.vision.wiseft_from`): ``(1 - alpha) theta_0 + alpha theta_1`` with the
  endpoints :func:`lpft.vision.wiseft_from.load_endpoints` builds (the source's start and its selected checkpoint;
  both FLYP towers for a FLYP source, whose every alpha classifies with its own text tower's zero-shot head).

Each loader returns ``(model, source, info, match)``: the Classifier (CPU, eval mode), which files the weights came
from, extra sidecar fields, and the record fields that pick the run's records of exactly this model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["SOUP_VARIANTS", "check_variant", "flyp_classifier", "handles", "is_wiseft_from", "load_model",
           "run_config"]

#: the soups a soup run can hold (lpft.vision.soup: ``--kind uniform|greedy|both``)
SOUP_VARIANTS = ("uniform", "greedy")

Loaded = tuple[Any, dict[str, str], dict[str, Any], dict[str, Any]]


def is_wiseft_from(cfg: dict[str, Any]) -> bool:
    """Whether a run config is WiSE-FT of another run (``--wiseft-from``)."""
    return cfg.get("method") == "wiseft" and bool(cfg.get("wiseft_from") or cfg.get("wiseft_source"))


def handles(cfg: dict[str, Any]) -> bool:
    """Whether :func:`load_model` (not the single-network path of lpft.vision.export) rebuilds this run."""
    return cfg.get("method") in ("soup", "flyp") or is_wiseft_from(cfg)


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config.json`` as the exporter reads it: a soup's own fields over its ingredients' common ones (the
    backbone options, templates and transforms live in ``common``); any other config unchanged."""
    if cfg.get("method") != "soup":
        return cfg
    return {**(cfg.get("common") or {}), **cfg}


def check_variant(cfg: dict[str, Any], variant: str | None) -> str | None:
    """Validate ``--variant``: which soup of a soup run (required when it holds both), refused for other runs.

    Returns:
        The variant (``"uniform"`` / ``"greedy"``) for a soup, None otherwise.

    Raises:
        ValueError: a variant for a non-soup run, none for a soup holding both, or one the soup does not hold.
    """
    from lpft.vision.soup import model_files

    name = cfg.get("run_id")
    if cfg.get("method") != "soup":
        if variant is not None:
            raise ValueError(f"--variant applies to model-soup runs only; {name} is a {cfg.get('method')!r} run "
                             f"(leave --variant out)")
        return None
    if variant is not None and variant not in SOUP_VARIANTS:
        raise ValueError(f"--variant must be one of {', '.join(SOUP_VARIANTS)}; got {variant!r}")
    files = model_files(cfg.get("kind"))
    if variant is None:
        if len(files) > 1:
            raise ValueError(f"{name} holds both the uniform and the greedy soup ({', '.join(files.values())}): pass "
                             f"--variant uniform or --variant greedy")
        return next(iter(files))
    if variant not in files:
        (have,) = files
        raise ValueError(f"{name} holds only the {have} soup (--kind {cfg.get('kind')}), not the {variant} one: pass "
                         f"--variant {have} or leave --variant out")
    return variant


def load_model(run_dir: Path, cfg: dict[str, Any], backbone, bench, *, alpha: float | None,
               variant: str | None) -> Loaded:
    """``(model, source, info, match)`` of a soup, FLYP or WiSE-FT-of-any-run run (see the module docstring).

    Args:
        run_dir: the complete run directory.
        cfg: its config (:func:`run_config`).
        backbone: the run's pretrained backbone, rebuilt and checked by lpft.vision.export (FLYP: it receives both
            fine-tuned towers).
        bench: the run's benchmark.
        alpha: WiSE-FT's weight of theta_1 (checked by the caller).
        variant: a soup's variant (:func:`check_variant`).
    """
    method = cfg.get("method")
    with torch.random.fork_rng(devices=[]):  # the run's model builders seed the global generator
        if method == "soup":
            return _soup(run_dir, cfg, backbone, variant)
        if method == "flyp":
            return _flyp(run_dir, cfg, backbone, bench)
        if is_wiseft_from(cfg):
            return _wiseft_from(run_dir, cfg, backbone, bench, alpha)
    raise ValueError(f"{run_dir} is a {method!r} run; lpft.vision.export_sources reads soups, FLYP and WiSE-FT of "
                     f"another run")


def _soup(run_dir: Path, cfg: dict[str, Any], backbone, variant: str) -> Loaded:
    from lpft.vision.backbones import Classifier, has_batchnorm
    from lpft.vision.soup import model_files

    file = model_files(cfg["kind"])[variant]
    path = run_dir / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the soup run writes its {variant} soup there")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "head.weight" not in state:
        raise ValueError(f"{path} does not hold a Classifier state dict (no head.weight)")
    model = Classifier(backbone, state["head.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    info_path = run_dir / "soup.json"
    soup_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    members = (soup_info.get(variant) or {}).get("ingredients")
    if members is None and variant == "uniform":
        members = cfg.get("ingredients")
    # the saved state is the evaluated one: with --recompute-bn its statistics are the re-estimated ones
    bn = "recomputed" if cfg.get("recompute_bn") and has_batchnorm(model) else None
    info = {"variant": variant, "ingredients": members,
            "bn_stats": bn or ("averaged" if has_batchnorm(model) else None)}
    n = "?" if members is None else len(members)
    return model.eval(), {"model": f"{file} ({variant} soup of {n} ingredients)"}, info, {"variant": variant,
                                                                                          "bn_stats": bn}


def _context(run_dir: Path, cfg: dict[str, Any], backbone, bench):
    """A RunContext without data, enough for the run's model builders (seed, templates, benchmark, backbone)."""
    import dataclasses

    from lpft.vision.config import RunConfig
    from lpft.vision.context import RunContext

    names = {f.name for f in dataclasses.fields(RunConfig)}
    rc = RunConfig.from_dict({k: v for k, v in cfg.items() if k in names})
    return RunContext(cfg=rc, bench=bench, backbone=backbone, train_set=None, train_set_eval=None, eval_sets={},
                      device=torch.device("cpu"), run_dir=run_dir, cache_dir=run_dir / ".cache", progress=False)


def _selected(run_dir: Path) -> str:
    hist = json.loads((run_dir / "history.json").read_text())
    return f"{hist.get('selected_checkpoint')} (epoch {hist.get('best_epoch')})"


def flyp_classifier(flyp, backbone, check: bool = True):
    """A :class:`~lpft.vision.flyp.FlypModel` as a Classifier with the same logits.

    ``backbone`` (the run's rebuilt :class:`~lpft.vision.backbones.ClipBackbone`, whose image tower is its CLIP
    model's) takes both of ``flyp``'s towers and ``logit_scale`` in place and L2-normalises its features; the head
    is ``flyp``'s zero-shot class head (``exp(logit_scale)`` folded in) with a zero bias.

    Args:
        flyp: a FlypModel holding the weights to export.
        backbone: modified in place.
        check: compare the two models' logits on a random batch (to 1e-5).

    Raises:
        RuntimeError: the backbone's image tower is not its CLIP model's, or the logits differ.
    """
    from lpft.vision.backbones import Classifier

    if backbone.visual is not backbone.clip_model.visual:
        raise RuntimeError("the backbone's image tower is not part of its CLIP model (a copy?); pass the backbone "
                           "create_backbone returned")
    flyp.eval()
    backbone.clip_model.load_state_dict(flyp.clip.state_dict(), strict=True)
    backbone.feature_norm = True  # FLYP scores the normalised image embedding
    with torch.no_grad():
        head = flyp.class_head().float()
    model = Classifier(backbone, head.shape[0]).eval()
    with torch.no_grad():
        model.head.weight.copy_(head)
        model.head.bias.zero_()
        if check:
            x = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
            want, got = flyp(x), model(x)
            if not torch.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.abs().max()))):
                raise RuntimeError(f"the FLYP model as a Classifier does not reproduce its logits (max abs difference "
                                   f"{float((got - want).abs().max()):.3g})")
    return model


_FLYP_NOTE = ("FLYP: both CLIP towers and logit_scale are fine-tuned; the head is the zero-shot head of the "
              "fine-tuned text tower (class names x the run's templates, unit rows times exp(logit_scale), zero bias)")


def _flyp(run_dir: Path, cfg: dict[str, Any], backbone, bench) -> Loaded:
    from lpft.vision.wiseft_from import load_endpoints

    # the FLYP endpoints of WiSE-FT: theta_1 is the run's result (the selected checkpoint, checked against history)
    flyp, _, theta1 = load_endpoints(_context(run_dir, cfg, backbone, bench), run_dir, cfg)
    flyp.load_state_dict(theta1, strict=True)
    info = {"templates": cfg.get("templates"), "notes": [_FLYP_NOTE]}
    return flyp_classifier(flyp, backbone), {"model": f"{_selected(run_dir)}, both towers (FLYP)"}, info, {}


def _source_dir(cfg: dict[str, Any]) -> Path:
    """The source run of a ``--wiseft-from`` run: the resolved directory it recorded, else the path it was given."""
    recorded = (cfg.get("wiseft_source") or {}).get("run_dir")
    for p in (recorded, cfg.get("wiseft_from")):
        if p and Path(p).is_dir():
            return Path(p)
    raise FileNotFoundError(f"the source run of {cfg.get('run_id')} is gone: neither {recorded} (wiseft_source) nor "
                            f"{cfg.get('wiseft_from')} (wiseft_from) is a directory; theta_0 and theta_1 come from it")


def _wiseft_from(run_dir: Path, cfg: dict[str, Any], backbone, bench, alpha: float) -> Loaded:
    from lpft.vision.interpolate import interpolate_state_dicts
    from lpft.vision.wiseft_from import load_endpoints, read_source, source_label

    src_dir, src = read_source(_source_dir(cfg))
    info = cfg.get("wiseft_source") or {}
    digest = hashlib.sha256((src_dir / "config.json").read_bytes()).hexdigest()
    if info.get("config_sha256") not in (None, digest):
        raise ValueError(f"{src_dir / 'config.json'} changed since {cfg.get('run_id')} ran: its records are not of "
                         f"the model the source holds now")
    if src.get("backbone_weights_id") not in (None, backbone.weights_id):
        raise ValueError(f"the source run {src_dir} used pretrained weights {src.get('backbone_weights_id')!r}, the "
                         f"rebuilt backbone has {backbone.weights_id!r}")
    model, theta0, theta1 = load_endpoints(_context(run_dir, cfg, backbone, bench), src_dir, src)
    model.load_state_dict(interpolate_state_dicts(theta0, theta1, alpha), strict=True)
    flyp = src["method"] == "flyp"
    if flyp:
        model = flyp_classifier(model, backbone)
    start = "zero-shot CLIP, both towers" if flyp else "pretrained backbone + init_head.pt"
    source = {"source_run": str(src_dir), "theta_0": f"source's start: {start}",
              "theta_1": f"source's {_selected(src_dir)}"}
    extra = {"wiseft_source": source_label(info) if info.get("method") else src["method"],
             "wiseft_source_run": info.get("run_id") or src_dir.name}
    if flyp:
        extra["notes"] = ["FLYP source: both CLIP towers and logit_scale are interpolated; the head is the zero-shot "
                          "head of the interpolated text tower (unit rows times exp(logit_scale), zero bias)"]
    return model.eval(), source, extra, {}
