"""``python -m lpft.vision.soup --runs DIR [--filter KEY=VALUE ...] [--kind uniform|greedy|both] --out OUT_DIR``.

Model soups (Wortsman, Ilharco, Gadre, Roelofs, Gontijo-Lopes, Morcos, Namkoong, Farhadi, Carmon, Kornblith,
Schmidt, ICML 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time"): average the weights of several networks fine-tuned from one pretrained model.

* Ingredients: the complete ``ft`` / ``lpft`` runs under ``--runs`` whose ``config.json`` matches every
  ``--filter`` (:mod:`lpft.vision.soup_ingredients`); they must share backbone, state-dict entries, pretrained
  weights (``backbone_weights_id``) and evaluation data. Each contributes the model its run selected
  (:func:`lpft.vision.export.load_run_model`).
* Uniform soup: the mean of every floating-point entry (BatchNorm running statistics included, as the paper
  averages whole state dicts; ``--recompute-bn`` re-estimates them on the ID-train images with the eval
  transform instead); integer buffers come from the first ingredient.
* Greedy soup (the paper's Recipe 1): ingredients sorted by the ID-val accuracy their runs recorded, best
  first; the next one is added when the soup's ID-val accuracy does not drop (``>=``).

Output ``OUT_DIR/<run_id>/`` (default ``soup-<kind>-<benchmark>-<backbone>-<hash of the ingredient ids>``):
``config.json`` (written first), ``model.pt`` (``--kind both``: ``model_uniform.pt`` and ``model_greedy.pt``: the
soup's :class:`~lpft.vision.backbones.Classifier` state dict), ``soup.json`` (ingredients, greedy trace) and
``records.jsonl`` (last: the run is complete exactly when it exists), every file written atomically. Records have
``method = "soup"``, ``variant`` (``uniform`` | ``greedy``), ``ingredients`` (run ids in the soup) and acc / ece /
nll per evaluation split from the package's evaluation (:func:`lpft.vision.context.evaluate_model`). A soup has no
seed of its own: ``seed`` is the ingredients' common seed, or the smallest one; ``lr`` their common learning rate
or null. Single process only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from lpft.vision.io import torch_save_atomic, write_json_atomic, write_text_atomic
from lpft.vision.soup_ingredients import (Ingredient, StateSum, check_compatible, check_same_entries, common_config,
                                         find_ingredients, parse_filters)

__all__ = ["KINDS", "default_soup_id", "load_soup_model", "main", "make_soup", "model_files"]

KINDS = ("uniform", "greedy", "both")


def default_soup_id(kind: str, benchmark: str, backbone: str, ingredient_ids: Sequence[str],
                    recompute_bn: bool = False) -> str:
    """``soup-<kind>-<benchmark>-<backbone>-<8 hex digits of sha256 over the sorted ids>`` (+ ``-bnrecomputed``)."""
    digest = hashlib.sha256("\n".join(sorted(ingredient_ids)).encode()).hexdigest()[:8]
    return f"soup-{kind}-{benchmark}-{backbone}-{digest}" + ("-bnrecomputed" if recompute_bn else "")


def model_files(kind: str) -> dict[str, str]:
    """Which file holds which soup: ``{"uniform": "model.pt"}``, or both variants' files for ``kind="both"``."""
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return {"uniform": "model_uniform.pt", "greedy": "model_greedy.pt"} if kind == "both" else {kind: "model.pt"}


def _ingredient_state(ing: Ingredient) -> dict[str, torch.Tensor]:
    """The state dict of the model ``ing``'s run selected (the checkpoint ``history.json`` names)."""
    from lpft.vision.export import _selected_state, read_run

    _, _, hist = read_run(ing.run_dir)
    return _selected_state(ing.run_dir, hist)[0]


class _Evaluator:
    """The ingredients' evaluation data and a model skeleton, rebuilt the way ``lpft.vision.run`` built them."""

    def __init__(self, first: Ingredient, *, run_id: str, seed: int, lr: float | None, out: Path, device: str,
                 data_root: str | None, recompute_bn: bool, progress: bool):
        from lpft.vision import distributed as D
        from lpft.vision.config import RunConfig
        from lpft.vision.context import RunContext
        from lpft.vision.data import get_benchmark, load_split
        from lpft.vision.export import load_run_model
        from lpft.vision.run import _limit
        from lpft.vision.transforms import build_transforms

        names = {f.name for f in dataclasses.fields(RunConfig)}
        cfg = RunConfig.from_dict({k: v for k, v in first.config.items() if k in names})
        cfg.method, cfg.run_id, cfg.seed, cfg.lr, cfg.out, cfg.device = "soup", run_id, seed, lr, str(out), device
        if data_root is not None:
            cfg.data_root = data_root
        self.model = load_run_model(first.run_dir).model  # checks the pretrained weights id of the run
        backbone = self.model.backbone
        spec = build_transforms(cfg.benchmark, backbone, protocol=cfg.protocol, transforms=cfg.transforms,
                                augment=bool(cfg.augment), image_size=cfg.image_size)
        recorded = (first.config.get("transforms_resolved") or {}).get("eval")
        if recorded is not None and repr(spec.eval) != recorded:
            raise ValueError(f"the eval transform rebuilt for {first.run_id} is {spec.eval!r}, but the run used "
                             f"{recorded}: lpft.vision.transforms changed since the run")
        bench = get_benchmark(cfg.benchmark).for_root(cfg.data_root)
        options = {"fmow_val": cfg.fmow_val} if cfg.fmow_val is not None and "fmow_val" in bench.options else None

        def split(name: str):
            ds = load_split(cfg.benchmark, cfg.data_root, name, spec.eval, selection=cfg.selection, options=options)
            if hasattr(ds, "on_corrupt"):
                ds.on_corrupt = cfg.on_corrupt
            ds = _limit(ds, cfg.limit, seed=0)  # the subset every ingredient saw (run.py: same for every seed)
            size = ((first.config.get("split_info") or {}).get(name) or {}).get("size")
            if size is not None and size != len(ds):
                raise ValueError(f"split {name} has {len(ds)} examples now, {size} when {first.run_id} ran: the "
                                 f"data changed (or --data-root points elsewhere)")
            return ds

        self.device = D.resolve_device(device)
        D.configure(self.device)
        eval_sets = {s: split(s) for s in bench.eval_splits}
        self.recompute_bn = recompute_bn
        self.ctx = RunContext(cfg=cfg, bench=bench, backbone=backbone, train_set=None,
                              train_set_eval=split("id_train") if recompute_bn else None, eval_sets=eval_sets,
                              device=self.device, run_dir=out / run_id, cache_dir=out / ".cache", progress=progress)

    def load(self, state: Mapping[str, torch.Tensor]):
        """The skeleton holding ``state`` (BatchNorm statistics re-estimated with ``--recompute-bn``)."""
        from lpft.vision.interpolate import recompute_batchnorm

        self.model.load_state_dict(state, strict=True)
        if self.recompute_bn:
            c = self.ctx.cfg
            self.model.to(self.device)
            recompute_batchnorm(self.model, self.ctx.train_set_eval, batch_size=c.eval_batch_size,
                                device=self.device, num_workers=c.num_workers, seed=c.seed, precision=c.precision)
        return self.model

    def val_acc(self, state: Mapping[str, torch.Tensor]) -> float:
        """ID-val accuracy of ``state``, as the run's selection computed it."""
        from lpft.vision import engine

        c, ds = self.ctx.cfg, self.ctx.eval_sets["id_val"]
        logits, labels = engine.predict(self.load(state), ds, batch_size=c.eval_batch_size, device=self.device,
                                        num_workers=c.num_workers, progress=False, precision=c.precision)
        return engine.accuracy(logits, labels, ds)

    def records(self, state: Mapping[str, torch.Tensor], **extra: Any) -> list[dict]:
        """acc / ece / nll records of ``state`` on every evaluation split."""
        from lpft.vision.backbones import has_batchnorm
        from lpft.vision.context import evaluate_model

        model = self.load(state)
        if self.recompute_bn and has_batchnorm(model):
            extra["bn_stats"] = "recomputed"
        return evaluate_model(self.ctx, model, desc=f"soup {extra.get('variant')} ", **extra)

    def state(self) -> dict[str, torch.Tensor]:
        """The skeleton's current state on the CPU (with re-estimated BatchNorm statistics, if any)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


def _greedy(ev: _Evaluator, ingredients: Sequence[Ingredient], first_state: Mapping[str, torch.Tensor]):
    """Recipe 1 of Wortsman et al. 2022: returns ``(soup state, kept run ids, trace)``."""
    missing = [i.run_id for i in ingredients if i.val_acc is None]
    if missing:
        raise ValueError(f"the greedy soup ranks ingredients by their recorded ID-val accuracy; {missing} recorded "
                         f"none (no acc record on id_val with epoch null)")
    order = sorted(ingredients, key=lambda i: (-i.val_acc, i.run_id))
    soup, kept, trace = StateSum(), [], []
    best = None
    for ing in order:
        state = first_state if ing is ingredients[0] else _ingredient_state(ing)
        acc = ev.val_acc(state if soup.n == 0 else soup.mean(extra=state))
        # Recipe 1 keeps an ingredient that does not lower held-out accuracy (>=); the official main.py:181 uses >
        keep = best is None or acc >= best
        if keep:
            soup.add(state)
            kept.append(ing.run_id)
            best = acc
        trace.append({"run_id": ing.run_id, "ingredient_val_acc": ing.val_acc, "soup_val_acc": acc, "kept": keep})
    return soup.mean(), kept, trace


def make_soup(runs: str | Path, *, filters: Mapping[str, str] | Sequence[str] | None = None, kind: str = "both",
              out: str | Path = "soups", run_id: str | None = None, recompute_bn: bool = False,
              device: str = "auto", data_root: str | None = None, progress: bool = False) -> Path:
    """Make the uniform and / or greedy soup of the matching runs and write its run directory.

    Args:
        runs: directory searched (recursively) for ingredient run directories.
        filters: ``{KEY: VALUE}`` or ``["KEY=VALUE", ...]`` matched against each run's ``config.json``.
        kind: ``"uniform"``, ``"greedy"`` or ``"both"``.
        out: directory that receives ``<run_id>/``.
        run_id: the soup's run id (default :func:`default_soup_id`).
        recompute_bn: re-estimate BatchNorm statistics of every evaluated soup on ID-train (eval transform).
        device: ``auto``, ``cpu``, ``cuda``, ...
        data_root: where the benchmark's data lives now (default: the ingredients' ``data_root``).
        progress: show progress bars.

    Returns:
        The soup's run directory.

    Raises:
        ValueError: a bad kind or filter, fewer than two ingredients, ingredients that differ in architecture,
            initialisation or evaluation data (the message names the runs and fields), greedy ingredients without
            a recorded ID-val accuracy; :class:`~lpft.vision.rundir.RunConfigMismatch`: the directory holds a
            soup of another config; FileNotFoundError: missing runs or run files.
    """
    from lpft.vision.rundir import RunLock, check_same_config
    from lpft.vision.run import environment_info, summary_table

    files = model_files(kind)
    flt = dict(filters) if isinstance(filters, Mapping) else parse_filters(filters)
    ingredients = find_ingredients(runs, flt)
    check_compatible(ingredients)
    ids = [i.run_id for i in ingredients]
    ref = ingredients[0].config
    seeds = [int(i.config.get("seed") or 0) for i in ingredients]
    lrs = {i.config.get("lr") for i in ingredients}
    seed, lr = min(seeds), (lrs.pop() if len(lrs) == 1 else None)
    run_id = run_id or default_soup_id(kind, ref["benchmark"], ref["backbone"], ids, recompute_bn)
    out = Path(out)
    run_dir = out / run_id
    common, varying = common_config(ingredients)
    config = {"method": "soup", "kind": kind, "run_id": run_id, "out": str(out), "device": device,
              "benchmark": ref["benchmark"], "backbone": ref["backbone"],
              "backbone_weights_id": ref.get("backbone_weights_id"), "seed": seed, "lr": lr,
              "recompute_bn": bool(recompute_bn), "filters": flt, "ingredients": ids, "common": common,
              "varying": varying, "data_root": data_root if data_root is not None else ref.get("data_root"),
              "provenance": {"runs": str(runs), "ingredient_dirs": {i.run_id: str(i.run_dir) for i in ingredients}}}
    check_same_config(run_dir, config)
    if (run_dir / "records.jsonl").is_file():
        print(f"{run_dir} is complete (records.jsonl exists, same config); nothing to do. Remove it to rerun.")
        return run_dir
    with RunLock(run_dir):
        ev = _Evaluator(ingredients[0], run_id=run_id, seed=seed, lr=lr, out=out, device=device,
                        data_root=data_root, recompute_bn=recompute_bn, progress=progress)
        first_state = {k: v.detach().cpu().clone() for k, v in ev.model.state_dict().items()}
        # one pass over every ingredient checks the architectures before anything is evaluated
        total = StateSum().add(first_state) if "uniform" in files else None
        for ing in ingredients[1:]:
            state = _ingredient_state(ing)
            check_same_entries(ids[0], first_state, ing.run_id, state)
            if total is not None:
                total.add(state)
        write_json_atomic(run_dir / "config.json", dict(config, environment=environment_info(ev.device)))
        soups: dict[str, tuple[dict[str, torch.Tensor], list[str]]] = {}
        info: dict[str, Any] = {"kind": kind, "recompute_bn": bool(recompute_bn), "ingredients": [
            {"run_id": i.run_id, "run_dir": str(i.run_dir), "method": i.config.get("method"),
             "seed": i.config.get("seed"), "lr": i.config.get("lr"), "val_acc": i.val_acc} for i in ingredients]}
        if total is not None:
            soups["uniform"] = (total.mean(), ids)
        del total
        if "greedy" in files:
            state, kept, trace = _greedy(ev, ingredients, first_state)
            soups["greedy"] = (state, kept)
            info["greedy"] = {"order": [t["run_id"] for t in trace], "steps": trace, "kept": kept}
        records = []
        for variant, (state, members) in soups.items():
            records += ev.records(state, variant=variant, ingredients=list(members))
            torch_save_atomic(ev.state(), run_dir / files[variant])
            info[variant] = dict(info.get(variant, {}), file=files[variant], ingredients=list(members))
        write_json_atomic(run_dir / "soup.json", info)
        write_text_atomic(run_dir / "records.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    print(summary_table([dict(r, stage=f"soup {r['variant']} ({len(r['ingredients'])})") for r in records],
                        title=f"{run_id}: {len(ids)} ingredients"))
    print(f"results: {run_dir / 'records.jsonl'}")
    return run_dir


def load_soup_model(run_dir: str | Path, variant: str | None = None):
    """The soup a soup run wrote, as a :class:`~lpft.vision.backbones.Classifier` on the CPU in eval mode.

    Args:
        run_dir: a complete soup run directory.
        variant: ``"uniform"`` or ``"greedy"``; may be left out when the run made one kind.

    Raises:
        FileNotFoundError: not a complete soup run; ValueError: a variant the run did not make.
    """
    from lpft.vision.backbones import Classifier, create_backbone

    run_dir = Path(run_dir)
    for name in ("config.json", "records.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: not a complete soup run directory")
    cfg = json.loads((run_dir / "config.json").read_text())
    if cfg.get("method") != "soup":
        raise ValueError(f"{run_dir} is a {cfg.get('method')!r} run, not a soup (use lpft.vision.export)")
    files = model_files(cfg["kind"])
    if variant is None and len(files) == 1:
        variant = next(iter(files))
    if variant not in files:
        raise ValueError(f"{run_dir} holds the variant(s) {sorted(files)}; pass variant= one of them, got {variant!r}")
    state = torch.load(run_dir / files[variant], map_location="cpu", weights_only=True)
    c = cfg["common"]
    with torch.random.fork_rng(devices=[]):  # a random-init backbone: the same skeleton as the ingredients'
        torch.manual_seed(int(c.get("seed", cfg["seed"]) or 0))
        bb = create_backbone(c["backbone"], weights=c.get("weights"), pretrained=c.get("pretrained"),
                             image_size=c.get("image_size"), augment=False, feature_norm=c.get("feature_norm"))
    model = Classifier(bb, state["head.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lpft.vision.soup", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", required=True, help="directory holding the ingredient runs (<run_id>/config.json)")
    p.add_argument("--filter", dest="filters", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keep runs whose config.json has KEY=VALUE (numbers compared as numbers); repeatable")
    p.add_argument("--kind", choices=KINDS, default="both", help="uniform soup, greedy soup (Recipe 1), or both")
    p.add_argument("--out", required=True, help="directory that receives <run_id>/")
    p.add_argument("--run-id", default=None, help="default soup-<kind>-<benchmark>-<backbone>-<hash of ingredients>")
    p.add_argument("--recompute-bn", action="store_true",
                   help="re-estimate BatchNorm statistics of each soup on ID-train instead of averaging them")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--data-root", default=None, help="where the benchmark's data lives (default: the runs' own)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    a = build_parser().parse_args(argv)
    return make_soup(a.runs, filters=a.filters, kind=a.kind, out=a.out, run_id=a.run_id, recompute_bn=a.recompute_bn,
                     device=a.device, data_root=a.data_root, progress=not a.quiet)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
