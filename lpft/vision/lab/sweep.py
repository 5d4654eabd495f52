"""The lab's knob sweep: pretraining settings x methods x learning rates x seeds, through the package's sweep.

A *setting* is a pretraining tag of ``digits_simclr`` (:mod:`lpft.vision.lab.backbone`). The default grid walks
two knobs (docs/lab.md, "The knob"):

* the **budget**: SimCLR steps 0 (random initialisation), 200 and 2000 at the default pool (typeset share 0.2);
* the **pool composition**: typeset share 0, 0.2 and 0.5 at the full budget.

Every setting gets its own runs directory ``<out>/<tag>/`` (run ids do not name the pretraining setting), and its
runs are planned by :func:`lpft.vision.sweep.plan_sweep` with ``--pretrained <tag>``, one learning-rate grid per
method, and executed by :func:`lpft.vision.sweep.run_sweep`, which skips complete runs and resumes interrupted
ones. Each ``(setting, seed)`` is pretrained first (:func:`pretrain_settings`): the runs of that seed then read the
cached checkpoint, since the backbone's pretraining seed is the run's seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lpft.vision.lab.backbone import NAME, canonical_tag, config_from_tag

__all__ = ["BENCHMARK", "FULL", "LAB_LRS", "LabGrid", "LabPlan", "SMALL", "default_tags", "plan_lab",
           "pretrain_settings", "run_lab"]

BENCHMARK = "digits"
METHODS = ("lp", "ft", "lpft", "wiseft")
#: learning-rate grids of the lab (FT from a random head; LP-FT from the LP head, an order of magnitude lower, as
#: in LP-FT's grids); WiSE-FT's fine-tuned end point starts from the LP head too (lpft.vision.methods.run_wiseft)
LAB_LRS: dict[str, tuple[float, ...]] = {"ft": (3e-3, 1e-2, 3e-2, 1e-1), "lpft": (3e-4, 1e-3, 3e-3, 1e-2),
                                         "wiseft": (1e-3,)}


@dataclass(frozen=True)
class LabGrid:
    """What one lab sweep runs."""

    budgets: tuple[int, ...]  #: SimCLR steps at ``share``
    shares: tuple[float, ...]  #: typeset shares at ``full_budget``
    full_budget: int
    share: float  #: the default pool's typeset share
    seeds: tuple[int, ...]
    lrs: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(LAB_LRS))
    extra_args: tuple[str, ...] = ()  #: further runner flags for every run
    tag_suffix: str = ""  #: appended to every pretraining tag (e.g. ``-b64-v2`` for a small pool)


#: the measured lab: 5 pretraining settings x 4 methods x 5 seeds (10 runs per setting and seed)
FULL = LabGrid(budgets=(0, 200, 2000), shares=(0.0, 0.2, 0.5), full_budget=2000, share=0.2, seeds=(0, 1, 2, 3, 4))
#: ``--small``: a tiny end-to-end version (2 settings, 2 seeds, one learning rate, 2 epochs, 96 images per split)
SMALL = LabGrid(budgets=(0, 30), shares=(), full_budget=30, share=0.2, seeds=(0, 1),
                lrs={"ft": (3e-2,), "lpft": (1e-3,), "wiseft": (1e-3,)},
                extra_args=("--epochs", "2", "--limit", "96", "--alphas", "0,0.5,1"), tag_suffix="-b64-v1")


def default_tags(grid: LabGrid) -> list[str]:
    """The grid's pretraining tags, canonical and without duplicates: the budget walk, then the pool walk."""
    tags = []
    for steps in grid.budgets:
        tags.append(f"s{steps}-p{grid.share:g}{grid.tag_suffix}")
    for share in grid.shares:
        tags.append(f"s{grid.full_budget}-p{share:g}{grid.tag_suffix}")
    out: list[str] = []
    for t in tags:
        c = canonical_tag(config_from_tag(t, 0))
        if c not in out:
            out.append(c)
    return out


@dataclass
class LabPlan:
    """The planned runs of every setting (``runs[tag]``) under ``out``."""

    out: Path
    tags: list[str]
    seeds: tuple[int, ...]
    runs: dict[str, list] = field(default_factory=dict)  #: tag -> [lpft.vision.sweep.SweepRun]

    def setting_dir(self, tag: str) -> Path:
        return self.out / tag

    @property
    def all_runs(self) -> list:
        return [r for t in self.tags for r in self.runs[t]]


def plan_lab(out: str | Path, tags: Sequence[str], seeds: Sequence[int], *, methods: Sequence[str] = METHODS,
             lrs: dict[str, tuple[float, ...]] | None = None, extra_args: Sequence[str] = ()) -> LabPlan:
    """Plan the runs of every setting (no side effects).

    Args:
        out: the lab's root directory; setting ``tag`` writes into ``out/tag``.
        tags: pretraining tags (canonical: :func:`default_tags`).
        seeds: run seeds (each also the pretraining seed).
        methods: subset of ``lp, ft, lpft, wiseft``.
        lrs: learning-rate grid per method (default :data:`LAB_LRS`; a method without an entry takes its preset).
        extra_args: further runner flags for every run.

    Returns:
        A :class:`LabPlan`.

    Raises:
        ValueError: an unknown method or tag, no seeds, or flags the sweep sets itself.
    """
    from lpft.vision.sweep import plan_sweep

    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"lab methods must be some of {', '.join(METHODS)}; got {list(methods)}")
    lrs = dict(LAB_LRS if lrs is None else lrs)
    plan = LabPlan(Path(out), [canonical_tag(config_from_tag(t, 0)) for t in tags], tuple(int(s) for s in seeds))
    if len(set(plan.tags)) != len(plan.tags):
        raise ValueError(f"duplicate pretraining settings in {list(tags)}")
    for tag in plan.tags:
        runs = []
        for m in methods:
            grid = "preset" if m == "lp" or m not in lrs else list(lrs[m])
            runs += plan_sweep(BENCHMARK, NAME, [m], plan.seeds, str(plan.setting_dir(tag)), grid,
                               ["--pretrained", tag, "--quiet", *extra_args])
        plan.runs[tag] = runs
    return plan


def pretrain_settings(plan: LabPlan, *, cache_dir: str | Path | None = None, progress: bool = True,
                      log=print) -> dict[tuple[str, int], dict]:
    """Pretrain (or find cached) every ``(setting, seed)`` of ``plan``; returns where each came from and its time."""
    from lpft.vision.lab.pretrain import pretrain

    out = {}
    for tag in plan.tags:
        for seed in plan.seeds:
            cfg = config_from_tag(tag, seed)
            t0 = time.time()
            res = pretrain(cfg, cache_dir, progress=progress)
            out[(tag, seed)] = {"source": res.source, "seconds": res.seconds, "key": cfg.key,
                                "final_loss": res.history[-1]["loss"] if res.history else None}
            if res.source == "trained":
                log(f"[lab] pretrained {tag} seed {seed} in {time.time() - t0:.0f}s "
                    f"(SimCLR loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f})")
    return out


def run_lab(plan: LabPlan, *, keep_going: bool = False, progress: bool = True, log=print) -> dict[str, dict]:
    """Run every setting's sweep in this process (complete runs are skipped); ``{tag: run ids by outcome}``."""
    from lpft.vision.sweep import check_plan, run_sweep

    for tag in plan.tags:  # refuse a reused directory of another config before anything runs
        check_plan(plan.runs[tag])
    status = {}
    for tag in plan.tags:
        t0 = time.time()
        status[tag] = run_sweep(plan.runs[tag], keep_going=keep_going, progress=progress)
        done = status[tag]
        log(f"[lab] {tag}: {len(done['done'])} run, {len(done['skipped'])} already complete, "
            f"{len(done['failed'])} failed ({time.time() - t0:.0f}s)")
    return status

