"""``python -m lpft.vision.export RUN_DIR [--alpha A] [--variant V] [--to open_clip|timm|torchvision] --out FILE``.

Writes the model a finished run selected in the format of the library its backbone comes from, so that it can
be used without ``lpft`` (formats: :mod:`lpft.vision.exportfmt`):

* ``FILE``: the state dict, loadable by the library call printed (and written to the sidecar);
* ``FILE.head.pt``: the linear head, ``{"weight" [C, D], "bias" [C], "classnames" [C]}``;
* ``FILE.json``: the sidecar: run id, method, alpha, backbone and weights, architecture, class names, the
  run's preprocessing, the accuracies the run recorded for this model, and how to load it;
* ``FILE.model_configs/<arch>.json``: only for an architecture open_clip does not ship (``tiny_clip``).

Which model: LP the pretrained backbone with ``head.pt``; zero-shot the pretrained CLIP model with its zero-shot
head (rebuilt from the class names and templates of the config); FT and LP-FT the checkpoint ``history.json``
selected; WiSE-FT ``(1 - A) theta_0 + A theta_1`` for ``--alpha A`` (Wortsman et al. 2022, Eq. 1), where
theta_0 is the pretrained backbone with ``theta0_head.pt`` (the zero-shot head for CLIP, else the LP head) and
theta_1 the selected checkpoint (``theta1_head.pt`` on the pretrained backbone for the linear-classifier variant).
Every floating-point entry is interpolated, BatchNorm running statistics included, as the official WiSE-FT
code interpolates whole state dicts; the run also reports statistics re-estimated on ID training images, which
the export does not hold. Model soups (``--variant uniform|greedy``), FLYP runs (both fine-tuned CLIP towers, the
head their zero-shot head) and WiSE-FT of any run (``--wiseft-from``, at ``--alpha A``) are rebuilt by
:mod:`lpft.vision.export_sources`.

The pretrained backbone is rebuilt from ``config.json`` (random initialisations from the run's seed) and must
have the weights id the run recorded. Before a file is kept, it is loaded back with the printed library call
and its logits on a random batch are compared with the package model's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lpft.vision import export_sources as sources
from lpft.vision import exportfmt as fmt
from lpft.vision.io import atomic_path, torch_save_atomic, write_json_atomic

__all__ = ["RunModel", "export_run", "load_run_model", "main", "valid_targets"]

valid_targets = fmt.valid_targets


@dataclass
class RunModel:
    """The model a run selected, rebuilt in the package.

    Attributes:
        run_dir: the run directory.
        config: its ``config.json``.
        model: a :class:`~lpft.vision.backbones.Classifier` on the CPU, in eval mode.
        classnames: the benchmark's class names, in label order.
        alpha: the WiSE-FT interpolation weight (None for other methods).
        source: which files the weights came from.
        info: extra sidecar fields (a soup's variant and ingredients, a WiSE-FT source, ...).
        match: record fields that pick the run's records of this model (a soup's variant, ...).
        notes: extra notes for the sidecar.
    """

    run_dir: Path
    config: dict[str, Any]
    model: Any
    classnames: list[str]
    alpha: float | None = None
    source: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    match: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    return path


def read_run(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """``(run_dir, config, history or None)`` of a complete run; FileNotFoundError names what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    cfg_file = _need(run_dir / "config.json", "not a run directory (python -m lpft.vision.run writes config.json "
                                              "first)")
    cfg = sources.run_config(json.loads(cfg_file.read_text()))  # a soup: over its ingredients' common settings
    _need(run_dir / "records.jsonl", "the run is not complete (records.jsonl is written last); finish it with "
                                     "python -m lpft.vision.run ... --resume")
    hist_path = run_dir / "history.json"
    hist = json.loads(hist_path.read_text()) if hist_path.is_file() else None
    return run_dir, cfg, hist


def check_alpha(cfg: dict[str, Any], alpha: float | None) -> float | None:
    """Validate ``--alpha`` for a run: required for WiSE-FT (in [0, 1]), refused for every other method."""
    method = cfg.get("method")
    if method != "wiseft":
        if alpha is not None:
            raise ValueError(f"--alpha applies to WiSE-FT runs only; {cfg.get('run_id')} is a {method!r} run "
                             f"(leave --alpha out)")
        return None
    if alpha is None:
        raise ValueError(f"{cfg.get('run_id')} is a WiSE-FT run: pass --alpha A in [0, 1] (0 = theta_0, 1 = the "
                         f"fine-tuned theta_1; the run evaluated alphas {cfg.get('alphas')})")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {alpha}")
    return alpha


def _rebuild_backbone(cfg: dict[str, Any]):
    """The run's pretrained backbone, as ``lpft.vision.run`` built it (seeded with the run's seed just before)."""
    from lpft.vision.backbones import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed") or 0))
        bb = create_backbone(cfg["backbone"], weights=cfg.get("weights"), pretrained=cfg.get("pretrained"),
                             image_size=cfg.get("image_size"), augment=False, feature_norm=cfg.get("feature_norm"))
    want = cfg.get("backbone_weights_id")
    if want is not None and bb.weights_id != want:
        raise ValueError(f"the rebuilt backbone {cfg['backbone']} has weights {bb.weights_id!r}, but the run used "
                         f"{want!r}: the pretrained weights changed or moved since the run")
    return bb.eval()


def _selected_state(run_dir: Path, hist: dict[str, Any] | None) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of the epoch the run selected, checked against ``history.json``."""
    from lpft.vision.rundir import load_checkpoint

    if hist is None:
        raise FileNotFoundError(f"{run_dir / 'history.json'} not found: it names the selected checkpoint")
    best = int(hist.get("best_epoch") or 0)
    if best == 0 or ("selected_checkpoint" in hist and hist["selected_checkpoint"] is None):
        raise ValueError(f"{run_dir} trained no epoch (epochs = 0): there is no fine-tuned model to export")
    rel = hist.get("selected_checkpoint") or ("ckpt/best.pt" if hist.get("select_epoch") == "best" else "ckpt/last.pt")
    ck = load_checkpoint(_need(run_dir / rel, "the checkpoint history.json selected"), fallback=False)
    if int(ck.get("epoch", -1)) != best:
        raise ValueError(f"{run_dir / rel} holds epoch {ck.get('epoch')}, but history.json selected epoch {best}")
    return ck["model"], f"{rel} (epoch {best})"


def _load_head(path: Path, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    obj = torch.load(_need(path, what), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "weight" not in obj or "bias" not in obj:
        raise ValueError(f"{path} does not hold a head ({{'weight', 'bias'}})")
    return obj["weight"].float(), obj["bias"].float()


def _zeroshot_head(cfg: dict[str, Any], backbone, bench) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-shot head the run built (class names x the config's templates), as lpft.vision.context does."""
    from lpft.vision.zeroshot import SIMPLE_TEMPLATES, imagenet_templates, zeroshot_head

    t = cfg.get("templates") or "benchmark"
    templates = imagenet_templates() if t == "imagenet" else SIMPLE_TEMPLATES if t == "simple" else bench.templates
    return zeroshot_head(backbone, list(bench.classnames), list(templates), device="cpu", progress=False)


def _classifier(backbone, state: dict[str, torch.Tensor]):
    from lpft.vision.backbones import Classifier

    model = Classifier(backbone, state["head.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_run_model(run_dir: str | Path, alpha: float | None = None, variant: str | None = None) -> RunModel:
    """Rebuild the model a finished run selected (WiSE-FT: at ``alpha``; a soup: its ``variant``).

    Args:
        run_dir: a complete run directory of ``python -m lpft.vision.run`` (or ``lpft.vision.soup``).
        alpha: WiSE-FT only (required there): the weight of theta_1 in ``(1 - alpha) theta_0 + alpha theta_1``.
        variant: soups only: ``"uniform"`` or ``"greedy"`` (required when the soup run holds both).

    Returns:
        A :class:`RunModel`.

    Raises:
        FileNotFoundError: the directory, ``config.json``, ``records.jsonl`` or a weights file is missing.
        ValueError: ``alpha`` missing / outside [0, 1] for WiSE-FT or given for another method, ``variant``
            missing / unknown for a soup or given for another run, or the pretrained weights differ from the run's.
    """
    from lpft.vision.data import get_benchmark
    from lpft.vision.interpolate import interpolate_state_dicts

    run_dir, cfg, hist = read_run(run_dir)
    alpha = check_alpha(cfg, alpha)
    variant = sources.check_variant(cfg, variant)
    method = cfg["method"]
    bench = get_benchmark(cfg["benchmark"])
    if getattr(bench, "root_defined", False):
        bench = bench.for_root(cfg.get("data_root"))
    backbone = _rebuild_backbone(cfg)
    pretrained = {} if sources.handles(cfg) else {f"backbone.{k}": v.detach().clone()
                                                  for k, v in backbone.state_dict().items()}
    source: dict[str, str] = {"backbone": f"pretrained {backbone.weights_id}"}
    info: dict[str, Any] = {}
    match: dict[str, Any] = {}
    if sources.handles(cfg):  # soups, FLYP, WiSE-FT of another run
        model, more, info, match = sources.load_model(run_dir, cfg, backbone, bench, alpha=alpha, variant=variant)
        source.update(more)
    elif method == "lp":
        w, b = _load_head(run_dir / "head.pt", "an LP run writes its head there")
        state, source["head"] = {**pretrained, "head.weight": w, "head.bias": b}, "head.pt"
    elif method == "zeroshot":
        w, b = _zeroshot_head(cfg, backbone, bench)
        state, source["head"] = {**pretrained, "head.weight": w, "head.bias": b}, f"zero-shot ({cfg.get('templates')})"
    elif method in ("ft", "lpft"):
        state, source["model"] = _selected_state(run_dir, hist)
    elif method == "wiseft":
        if (run_dir / "theta0_head.pt").is_file() or not backbone.is_clip:
            w0, b0 = _load_head(run_dir / "theta0_head.pt", "WiSE-FT runs write theta_0's head there")
            source["theta_0"] = "pretrained backbone + theta0_head.pt"
        else:  # runs from before theta0_head.pt: the CLIP zero-shot head is rebuilt from the config
            w0, b0 = _zeroshot_head(cfg, backbone, bench)
            source["theta_0"] = "pretrained backbone + zero-shot head (rebuilt)"
        theta0 = {**pretrained, "head.weight": w0, "head.bias": b0}
        if cfg.get("wiseft_finetune") == "linear":
            w1, b1 = _load_head(run_dir / "theta1_head.pt", "the linear-classifier WiSE-FT variant's fine-tuned head")
            theta1, source["theta_1"] = {**pretrained, "head.weight": w1, "head.bias": b1}, "theta1_head.pt"
        else:
            theta1, where = _selected_state(run_dir, hist)
            source["theta_1"] = where
        state = interpolate_state_dicts(theta0, theta1, alpha)
    else:
        raise ValueError(f"unknown method {method!r} in {run_dir / 'config.json'}")
    if not sources.handles(cfg):
        model = _classifier(backbone, state)
    classnames = [str(c) for c in bench.classnames]
    if model.head.weight.shape[0] != len(classnames):
        raise ValueError(f"the head has {model.head.weight.shape[0]} classes, benchmark {cfg['benchmark']} "
                         f"{len(classnames)}")
    notes = list(info.pop("notes", []))
    return RunModel(run_dir, cfg, model, classnames, alpha, source, info, match, notes)


def _recorded(run_dir: Path, alpha: float | None, match: dict[str, Any] | None = None) -> dict[str, float]:
    """The accuracies the run recorded for exactly this model (WiSE-FT: this alpha, interpolated BN; ``match``:
    further record fields, ``bn_stats`` among them replacing the default)."""
    from lpft.vision.records import read_records

    match = dict(match or {})
    bn = (match.pop("bn_stats"),) if "bn_stats" in match else (None, "interpolated")
    out = {}
    for r in read_records(run_dir / "records.jsonl"):
        if (r["metric"] == "acc" and r.get("epoch") is None and r.get("stage") is None and r.get("bn_stats") in bn
                and all(r.get(k) == v for k, v in match.items())
                and (r.get("alpha") is None if alpha is None else r.get("alpha") == alpha)):
            out[r["eval_split"]] = r["value"]
    return out


def _check_batch(bb, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


def export_run(run_dir: str | Path, out: str | Path, *, to: str | None = None, alpha: float | None = None,
               check: bool = True, variant: str | None = None) -> dict[str, Any]:
    """Export the model a run selected (WiSE-FT: at ``alpha``; a soup: its ``variant``) to ``out`` in ``to``'s format.

    Args:
        run_dir: a complete run directory.
        out: the model file to write; ``out + ".head.pt"`` and ``out + ".json"`` are written next to it.
        to: ``"open_clip"``, ``"timm"`` or ``"torchvision"``; default: the backbone's only target.
        alpha: WiSE-FT only (required there).
        variant: soups only: ``"uniform"`` or ``"greedy"`` (required when the soup run holds both).
        check: load the file back with the library call of the sidecar and compare logits on a random batch
            with the package model's before keeping it.

    Returns:
        The sidecar (also written to ``out + ".json"``).

    Raises:
        ValueError: a target the backbone does not have (the message lists the valid ones), a bad ``alpha`` or
            ``variant``, an ``out`` name ending in ``.safetensors`` / ``.json``; FileNotFoundError: missing run files;
        RuntimeError: the file loaded back does not reproduce the package model's logits.
    """
    from lpft.vision.backbones import has_batchnorm

    run_dir, cfg, _ = read_run(run_dir)
    check_alpha(cfg, alpha)
    sources.check_variant(cfg, variant)
    valid = fmt.valid_targets(cfg["backbone"])
    to = to if to is not None else (valid[0] if len(valid) == 1 else None)
    if to not in valid:
        have = f"valid targets: {', '.join(valid)}" if valid else "it has no export target (a test backbone)"
        raise ValueError(f"cannot export backbone {cfg['backbone']!r} to {to!r}; {have}")
    out = Path(out).absolute()
    if out.suffix in (".safetensors", ".json"):
        raise ValueError(f"--out {out}: the model file is a torch.save state dict; name it .pt / .pth / .bin")
    rm = load_run_model(run_dir, alpha, variant)
    model, bb = rm.model, rm.model.backbone
    n = len(rm.classnames)
    head_file, side_file = Path(f"{out}.head.pt"), Path(f"{out}.json")
    feature_norm = bool(bb.feature_norm) if bb.is_clip else None
    arch_cfg = fmt.open_clip_model_config(fmt.clip_arch(bb)) if to == "open_clip" else None
    cfg_dir = None if arch_cfg is None else Path(f"{out}.model_configs")
    how = fmt.load_instructions(to, backbone=bb, num_classes=n, file=str(out), head_file=str(head_file),
                                feature_norm=feature_norm, model_config_dir=None if cfg_dir is None else str(cfg_dir))
    head = {"weight": model.head.weight.detach().clone(), "bias": model.head.bias.detach().clone(),
            "classnames": list(rm.classnames)}
    sd = fmt.export_state_dict(model, to)
    max_diff = None
    with atomic_path(out) as tmp:
        torch.save(sd, tmp)
        if check:
            x = _check_batch(bb)
            with torch.no_grad():
                want = model(x)
            got = fmt.exported_logits(to, fmt.load_exported(to, tmp, backbone=bb, num_classes=n), x, head,
                                      feature_norm=bool(feature_norm))
            max_diff = float((got - want).abs().max())
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max()))):
                raise RuntimeError(f"the exported {to} model does not reproduce the run's logits (max abs "
                                   f"difference {max_diff:.3g}); nothing was written to {out}")
    torch_save_atomic(head, head_file)
    if cfg_dir is not None:
        fmt.write_model_config(fmt.clip_arch(bb), arch_cfg, cfg_dir)
    sidecar = {
        "run_id": cfg.get("run_id"), "run_dir": str(run_dir.absolute()), "method": cfg["method"], "alpha": rm.alpha,
        "alpha_in_run_grid": (rm.alpha in (cfg.get("alphas") or [])) if rm.alpha is not None else None,
        "wiseft_finetune": cfg.get("wiseft_finetune") if cfg["method"] == "wiseft" else None,
        "benchmark": cfg["benchmark"], "backbone": cfg["backbone"], "weights_id": bb.weights_id,
        "target": to, "arch": how["arch"], "num_classes": n, "classnames": rm.classnames,
        "feature_norm": feature_norm, "source": rm.source,
        # strictly between the endpoints a BatchNorm network holds interpolated running statistics
        "bn_stats": "interpolated" if rm.alpha is not None and 0 < rm.alpha < 1 and has_batchnorm(model) else None,
        "preprocessing": {"image_size": bb.image_size, "mean": list(bb.norm_mean), "std": list(bb.norm_std),
                          "interpolation": bb.interpolation.value,
                          "run_eval_transform": (cfg.get("transforms_resolved") or {}).get("eval")},
        "recorded_accuracy": _recorded(run_dir, rm.alpha, rm.match),
        "files": {"model": out.name, "head": head_file.name, "sidecar": side_file.name,
                  "model_configs": None if cfg_dir is None else cfg_dir.name},
        "load": how["code"], "load_kwargs": how["kwargs"], "notes": how["notes"] + rm.notes,
        "check": {"max_abs_logit_diff": max_diff} if check else None, **rm.info,
    }
    write_json_atomic(side_file, sidecar)
    return sidecar


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lpft.vision.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a complete run directory of python -m lpft.vision.run (or lpft.vision.soup)")
    p.add_argument("--alpha", type=float, default=None, help="WiSE-FT runs only (required there): weight of theta_1")
    p.add_argument("--variant", choices=sources.SOUP_VARIANTS, default=None,
                   help="soup runs only: which soup (required when the soup run holds both)")
    p.add_argument("--to", choices=fmt.TARGETS, default=None,
                   help="library format (default: the backbone's: open_clip for CLIP, timm for efficientnet_lite0, "
                        "torchvision for the ResNet-50s)")
    p.add_argument("--out", required=True, help="model file to write (FILE.head.pt and FILE.json go beside it)")
    p.add_argument("--no-check", action="store_true", help="skip loading the file back and comparing logits")
    return p


def describe(sidecar: dict[str, Any]) -> str:
    """The printed summary: what was exported and how to load it."""
    alpha = f", alpha={sidecar['alpha']:g}" if sidecar["alpha"] is not None else ""
    alpha += f", {sidecar['variant']}" if sidecar.get("variant") else ""
    lines = [f"exported {sidecar['run_id']} ({sidecar['method']}{alpha}) as {sidecar['target']} {sidecar['arch']}, "
             f"{sidecar['num_classes']} classes",
             *(f"  {k}: {v}" for k, v in sidecar["files"].items() if v), "load it with:",
             *(f"    {line}" for line in sidecar["load"].splitlines()), *(f"note: {n}" for n in sidecar["notes"])]
    if sidecar["bn_stats"] == "interpolated":
        lines.append("note: BatchNorm running statistics are interpolated (official WiSE-FT); the run also "
                     "reports statistics re-estimated on ID training images, which this file does not hold")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    sidecar = export_run(args.run_dir, args.out, to=args.to, alpha=args.alpha, check=not args.no_check,
                         variant=args.variant)
    print(describe(sidecar))
    return sidecar


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
