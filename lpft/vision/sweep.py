"""Run a paper-style sweep (each method's learning-rate grid x seeds): in this process, or as cluster jobs.

``python -m lpft.vision.sweep --benchmark B --backbone K --methods lp,ft,lpft,wiseft --seeds 0,1,2
[--lrs paper|preset|LIST] --out DIR [--executor inline|local|slurm ...] [--status] [run flags...]``

The run list is a plain data structure (:func:`plan_sweep` returns :class:`SweepRun` items holding the
runner's argv and its resolved config). ``--executor inline`` (default) runs them one after another in this
process; ``local`` / ``slurm`` submit one submitit job per run (:mod:`lpft.vision.cluster`), requeued with
``--resume`` on preemption; ``--status`` prints where every run stands. Runs whose
``<out>/<run_id>/records.jsonl`` exists are complete and skipped, runs with checkpoints but no records are
resumed, so an interrupted sweep continues where it stopped. A run directory is never reused for another
config: each planned run's resolved config is compared with the stored ``config.json`` before anything runs,
and a mismatch (say a ``--limit 40`` smoke sweep into the same ``--out``) is refused with the runs and fields
named (:mod:`lpft.vision.rundir`). Every run's records land under ``--out``: the input of
``python -m lpft.vision.table --runs DIR``.

Learning-rate grids (Kumar et al. 2022, code release; ``docs/protocols.md``) are kept as data in
:data:`PAPER_LR_GRIDS`. LP and zero-shot have no learning rate: one run per seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lpft.vision.rundir import DERIVED_FIELDS, RunConfigMismatch, config_diff, format_diff, read_config

# LP-FT release grids (Kumar et al. 2022; docs/protocols.md). ImageNet (CLIP ViT-B/16) uses smaller ones.
FT_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LPFT_GRID = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7)
FT_GRID_IMAGENET = (1e-4, 3e-4, 1e-3)
LPFT_GRID_IMAGENET = (1e-5, 3e-5, 1e-4)
# WiSE-FT fine-tunes zero-shot CLIP with one learning rate, 3e-5 (Wortsman et al. 2022, Sec. 3; docs/protocols.md).
WISEFT_CLIP_LR = (3e-5,)
# FLYP's release runs every benchmark at one learning rate, 1e-5 (locuslab/FLYP README.md:34, 45, 54; docs/methods.md)
FLYP_LR = (1e-5,)

PAPER_LR_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "default": {"ft": FT_GRID, "lpft": LPFT_GRID, "wiseft": FT_GRID},
    "imagenet": {"ft": FT_GRID_IMAGENET, "lpft": LPFT_GRID_IMAGENET, "wiseft": FT_GRID_IMAGENET},
}
NO_LR_METHODS = ("lp", "zeroshot")
ALL_METHODS = ("lp", "ft", "lpft", "wiseft", "zeroshot", "flyp")
# flags the sweep sets itself; passing them through would make run ids and records disagree
_OWN_FLAGS = ("--method", "--benchmark", "--backbone", "--seed", "--lr", "--out", "--run-id")


def paper_lr_grid(method: str, benchmark: str, backbone: str) -> tuple[float | None, ...]:
    """The paper's learning-rate grid for one method (``(None,)`` for LP and zero-shot).

    WiSE-FT on a CLIP backbone follows Wortsman et al. (one learning rate, 3e-5); on other backbones its
    fine-tuned end point is an FT run, so it takes FT's grid.
    """
    if method in NO_LR_METHODS:
        return (None,)
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(ALL_METHODS)}")
    if method == "wiseft" and backbone.startswith("clip_"):
        return WISEFT_CLIP_LR
    if method == "flyp":
        return FLYP_LR
    table = PAPER_LR_GRIDS["imagenet" if benchmark == "imagenet" else "default"]
    return table[method]


def run_id_for(benchmark: str, backbone: str, method: str, lr: float | None, seed: int) -> str:
    """The base run id ``{benchmark}-{backbone}-{method}-lr{lr:g}-seed{seed}`` (``na`` for no lr).

    :func:`plan_sweep` names runs with the runner's own ``default_run_id`` of the resolved config instead, which
    can add variant suffixes (e.g. ``-lc`` for WiSE-FT's linear-classifier variant).
    """
    lr_s = "na" if lr is None else f"{lr:g}"
    return f"{benchmark}-{backbone}-{method}-lr{lr_s}-seed{seed}"


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: what it is, where it writes, and the runner's argv."""

    method: str
    benchmark: str
    backbone: str
    seed: int
    lr: float | None
    run_id: str
    out: str
    argv: tuple[str, ...] = field(default=())
    #: the resolved config as compared with a stored ``config.json`` (:func:`requested_config`); empty when the
    #: run was built by hand, in which case :func:`check_plan` resolves it from ``argv``
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.run_id

    @property
    def records_path(self) -> Path:
        return self.run_dir / "records.jsonl"

    def is_complete(self) -> bool:
        """A run is complete iff its ``records.jsonl`` exists (the runner writes it atomically at the end)."""
        return self.records_path.is_file()

    def is_resumable(self) -> bool:
        """Checkpoints of an unfinished run exist (``<run_dir>/*/last.pt`` or its ``last.prev.pt`` copy)."""
        return not self.is_complete() and any(
            any(self.run_dir.glob(f"*/{name}")) for name in ("last.pt", "last.prev.pt"))

    def launch_argv(self) -> list[str]:
        """The argv to start the run with now: ``argv`` plus ``--resume`` when it has checkpoints to continue."""
        argv = list(self.argv)
        return argv + ["--resume"] if self.is_resumable() and "--resume" not in argv else argv

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["argv"], d["config"] = list(self.argv), dict(self.config)
        return d


def resolve_run_config(argv: Sequence[str]):
    """The :class:`~lpft.vision.config.RunConfig` the runner would execute for ``argv``, without running it.

    Parses with the runner's own parser (``lpft.vision.run.build_parser`` / ``config_from_args``), resolves
    presets (``resolve_config``) and fills the run id (``default_run_id``) as the runner does.

    Args:
        argv: the runner's flags.

    Returns:
        The resolved ``RunConfig`` (``run_id`` set).

    Raises:
        ValueError: flags the runner rejects (instead of argparse's exit), or an invalid config.
    """
    from lpft.vision.config import default_run_id, resolve_config
    from lpft.vision.run import build_parser, config_from_args

    parser = build_parser()

    def _error(message: str):
        raise ValueError(f"runner flags {' '.join(argv)!r}: {message}")

    parser.error = _error  # type: ignore[method-assign]
    cfg = resolve_config(config_from_args(parser.parse_args(list(argv))))
    cfg.run_id = cfg.run_id or default_run_id(cfg)
    return cfg


def requested_config(cfg) -> dict[str, Any]:
    """What a run directory's ``config.json`` is compared with.

    Args:
        cfg: a resolved ``RunConfig``.

    Returns:
        ``cfg.to_dict()`` without the derived fields the run fills in itself (still empty before it runs).
    """
    return {k: v for k, v in cfg.to_dict().items() if not (k in DERIVED_FIELDS and v in (None, {}, [], ""))}


def check_plan(runs: Sequence[SweepRun]) -> None:
    """Refuse to reuse any run directory that holds a run of another config.

    Raises:
        RunConfigMismatch: naming every such run and its differing fields (``stored != requested``).
    """
    problems = []
    for r in runs:
        stored = read_config(r.run_dir)
        if stored is None:
            continue
        diff = config_diff(stored, r.config or requested_config(resolve_run_config(r.argv)))
        if diff:
            problems.append(f"{r.run_id}:\n{format_diff(diff)}")
    if problems:
        raise RunConfigMismatch(
            f"{len(problems)} run director{'y' if len(problems) == 1 else 'ies'} under {runs[0].out} hold runs of "
            f"another config; refusing to reuse them:\n" + "\n".join(problems)
            + "\nChoose another --out, or remove those run directories to rerun them.")


def _preset_lr(method: str, benchmark: str, backbone: str) -> float | None:
    from lpft.vision.config import RunConfig, resolve_config

    return resolve_config(RunConfig(method=method, benchmark=benchmark, backbone=backbone)).lr


def plan_sweep(
    benchmark: str,
    backbone: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str,
    lrs: str | Sequence[float] = "paper",
    extra_args: Sequence[str] = (),
) -> list[SweepRun]:
    """Build the run list of a sweep (no side effects).

    Args:
        benchmark: registered benchmark name.
        backbone: registered backbone name (it is part of every run id).
        methods: subset of ``lp, ft, lpft, wiseft, zeroshot, flyp``.
        seeds: seeds to replicate every configuration with (LP-FT: 0, 1, 2).
        out: runs directory.
        lrs: ``"paper"`` (each method's grid, :func:`paper_lr_grid`), ``"preset"`` (the runner's preset
            learning rate, one per method) or a list of learning rates used for every method with one.
        extra_args: further runner flags appended to every argv (``--epochs 2 --limit 64 ...``).

    Returns:
        The runs in execution order (method, then learning rate, then seed), each with its resolved config;
        run ids are the runner's defaults (:func:`resolve_run_config`).

    Raises:
        ValueError: unknown methods, no seeds, bad learning rates, flags the sweep sets itself, or run flags
            the runner rejects.
    """
    if not methods:
        raise ValueError("no methods given; expected some of " + ", ".join(ALL_METHODS))
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; expected some of {', '.join(ALL_METHODS)}")
    if not seeds:
        raise ValueError("no seeds given (e.g. --seeds 0,1,2)")
    own = [a for a in extra_args if a.split("=", 1)[0] in _OWN_FLAGS]
    if own:
        raise ValueError(f"{own} are set by the sweep itself; use --methods/--seeds/--lrs/--benchmark/--backbone/--out")
    if isinstance(lrs, str) and lrs not in ("paper", "preset"):
        raise ValueError(f"lrs must be 'paper', 'preset' or a list of numbers, got {lrs!r}")
    if not isinstance(lrs, str):
        lrs = [float(x) for x in lrs]
        if not lrs or any(not x > 0 for x in lrs):
            raise ValueError(f"learning rates must be positive numbers, got {lrs}")
    runs = []
    for m in dict.fromkeys(methods):
        if m in NO_LR_METHODS:
            grid: Sequence[float | None] = (None,)
        elif lrs == "paper":
            grid = paper_lr_grid(m, benchmark, backbone)
        elif lrs == "preset":
            grid = (_preset_lr(m, benchmark, backbone),)
        else:
            grid = lrs
        for lr in grid:
            for seed in dict.fromkeys(int(s) for s in seeds):
                head = ["--method", m, "--benchmark", benchmark, "--backbone", backbone, "--seed", str(seed),
                        "--out", str(out)]
                tail = (["--lr", repr(float(lr))] if lr is not None else []) + list(extra_args)
                cfg = resolve_run_config(head + tail)
                argv = tuple(head + ["--run-id", cfg.run_id] + tail)
                runs.append(SweepRun(m, benchmark, backbone, seed, lr, cfg.run_id, str(out), argv,
                                     requested_config(cfg)))
    return runs


def run_sweep(
    runs: Sequence[SweepRun],
    runner: Callable[[list[str]], Any] | None = None,
    *,
    keep_going: bool = False,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Execute runs one after another in this process, skipping complete ones and resuming interrupted ones.

    Every run directory is checked against its planned config first (:func:`check_plan`); nothing runs when
    one holds another config.

    Args:
        runs: from :func:`plan_sweep`.
        runner: called with each run's argv; default :func:`lpft.vision.run.main`.
        keep_going: on a failing run, note it and continue instead of stopping the sweep.
        progress: tqdm bar over runs.

    Returns:
        ``{"done": [...], "skipped": [...], "failed": [...]}`` lists of run ids.

    Raises:
        RunConfigMismatch: a run directory holds a run of another config.
    """
    check_plan(runs)
    if runner is None:
        from lpft.vision.run import main as runner
    from lpft.vision.progress import tqdm

    status: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
    bar = tqdm(runs, desc="sweep", unit="run", disable=not progress)
    for r in bar:
        bar.set_postfix_str(r.run_id)
        if r.is_complete():
            status["skipped"].append(r.run_id)
            continue
        t0 = time.time()
        try:
            runner(r.launch_argv())
        except Exception as e:
            if not keep_going:
                raise RuntimeError(f"sweep run {r.run_id} failed ({type(e).__name__}: {e}); rerun the same "
                                   "command to resume after fixing it (complete runs are skipped)") from e
            print(f"[sweep] {r.run_id} failed: {type(e).__name__}: {e}", file=sys.stderr)
            status["failed"].append(r.run_id)
            continue
        if not r.is_complete():
            msg = f"sweep run {r.run_id} returned but wrote no {r.records_path}"
            if not keep_going:
                raise RuntimeError(msg)
            print(f"[sweep] {msg}", file=sys.stderr)
            status["failed"].append(r.run_id)
            continue
        status["done"].append(r.run_id)
        bar.write(f"[sweep] {r.run_id} done in {time.time() - t0:.0f}s")
    return status


def _parse_list(s: str, typ) -> list:
    try:
        return [typ(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {s!r}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, list[str]]:
    """CLI entry point; unknown flags are passed through to every run (``--epochs``, ``--limit``, ...).

    Returns:
        Run ids by outcome: inline ``{"done", "skipped", "failed"}``; local / slurm also ``"submitted"``;
        ``--status``: run ids by state (``done``, ``running``, ``failed``, ``not started``, ...).
    """
    from lpft.vision import cluster

    ap = argparse.ArgumentParser(prog="python -m lpft.vision.sweep", description=__doc__.split("\n\n")[0],
                                 allow_abbrev=False)
    ap.add_argument("--benchmark", default="digits")
    ap.add_argument("--backbone", default=None, help="default: the benchmark's preset backbone")
    ap.add_argument("--methods", default="lp,ft,lpft,wiseft", type=lambda s: _parse_list(s, str))
    ap.add_argument("--seeds", default="0,1,2", type=lambda s: _parse_list(s, int))
    ap.add_argument("--lrs", default="paper", help="'paper' (each method's grid), 'preset', or e.g. 1e-3,1e-4")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (one argv per line) and exit")
    ap.add_argument("--keep-going", action="store_true", help="inline: continue past failing runs")
    ap.add_argument("--status", action="store_true",
                    help="list every planned run as done / running / failed (with its log) / not started; exit")
    cluster.add_cluster_arguments(ap)
    args, extra = ap.parse_known_args(argv)
    lrs: str | list[float] = args.lrs if args.lrs in ("paper", "preset") else _parse_list(args.lrs, float)
    backbone = args.backbone
    try:
        opts = cluster.options_from_args(args)
        if backbone is None:
            from lpft.vision.config import RunConfig, resolve_config

            backbone = resolve_config(RunConfig(method="lp", benchmark=args.benchmark)).backbone
        plan = plan_sweep(args.benchmark, backbone, args.methods, args.seeds, args.out, lrs, extra)
    except ValueError as e:
        ap.error(str(e))
    if args.status:
        states = cluster.run_states(plan, opts.logs_dir(args.out))
        print(cluster.format_status(states))
        out: dict[str, list[str]] = {}
        for st in states:
            out.setdefault(st.state, []).append(st.run_id)
        return out
    check_plan(plan)  # before printing or submitting anything
    todo = sum(not r.is_complete() for r in plan)
    print(f"[sweep] {len(plan)} runs, {len(plan) - todo} already complete, into {args.out}")
    if args.dry_run:
        for r in plan:
            print(("(complete) " if r.is_complete() else "") + "python -m lpft.vision.run " + " ".join(r.launch_argv()))
        return {"done": [], "skipped": [], "failed": []}
    if opts.executor == "inline":
        status = run_sweep(plan, keep_going=args.keep_going)
    else:
        status = cluster.submit_sweep(plan, opts)
    print("[sweep] " + ", ".join(f"{k} {len(v)}" for k, v in status.items())
          + f"; status: add --status; table: python -m lpft.vision.table --runs {args.out}")
    return status


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError, ImportError) as e:  # RunConfigMismatch is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
