"""``python -m lpft.vision.lab``: the offline lab from one command (pretraining, runs, table, figure).

    python -m lpft.vision.lab --out runs/lab                 # 5 settings x {LP, FT, LP-FT, WiSE-FT} x 5 seeds
    python -m lpft.vision.lab --out runs/lab-small --small   # a tiny end-to-end version (about a minute)
    python -m lpft.vision.lab --out runs/lab --report-only   # table and figure from the runs already there

Pretraining is cached by config hash and complete runs are skipped, so rerunning the command resumes a sweep
where it stopped. Unknown flags go to every run (e.g. ``--device cpu``). Writes ``<out>/<tag>/<run_id>/`` per run,
``<out>/lab_table.md``, ``<out>/lab_summary.json`` and ``<out>/figures/lab.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from lpft.vision.io import write_json_atomic, write_text_atomic

__all__ = ["build_parser", "main"]


def _list(typ):
    def parse(s: str) -> list:
        try:
            return [typ(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {s!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lpft.vision.lab", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--out", default="runs/lab", help="lab directory (one sub-directory per pretraining setting)")
    p.add_argument("--small", action="store_true", help="tiny end-to-end version (2 settings, 2 seeds, 2 epochs)")
    p.add_argument("--seeds", type=_list(int), default=None, help="run seeds = pretraining seeds (default 0-4)")
    p.add_argument("--budgets", type=_list(int), default=None, help="SimCLR steps of the budget walk (0,200,2000)")
    p.add_argument("--shares", type=_list(float), default=None, help="typeset shares of the pool walk (0,0.2,0.5)")
    p.add_argument("--share", type=float, default=None, help="typeset share of the budget walk (0.2)")
    p.add_argument("--full-budget", type=int, default=None, help="steps of the pool walk (2000)")
    p.add_argument("--methods", type=_list(str), default=None, help="subset of lp,ft,lpft,wiseft")
    p.add_argument("--cache-dir", default=None, help="pretraining cache (default $LPFT_LAB_CACHE or ~/.cache/lpft/lab)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--report-only", action="store_true", help="only read the runs and write the table and figure")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    p.add_argument("--keep-going", action="store_true", help="continue past failing runs")
    return p


def _grid(args, extra: Sequence[str]):
    from lpft.vision.lab.sweep import FULL, METHODS, SMALL

    g = SMALL if args.small else FULL
    over: dict[str, Any] = {}
    for name in ("seeds", "budgets", "shares"):
        if getattr(args, name) is not None:
            over[name] = tuple(getattr(args, name))
    if args.share is not None:
        over["share"] = args.share
    if args.full_budget is not None:
        over["full_budget"] = args.full_budget
    over["extra_args"] = tuple(g.extra_args) + tuple(extra)
    methods = tuple(args.methods) if args.methods else METHODS
    return dataclasses.replace(g, **over), methods


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the lab; returns ``{"table": text, "summary": dict, "figures": [paths], "status": ...}``."""
    from lpft.vision.lab.report import format_report, lab_figure, read_setting, setting_summary
    from lpft.vision.lab.sweep import default_tags, plan_lab, pretrain_settings, run_lab

    args, extra = build_parser().parse_known_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.cache_dir is not None:  # the backbone factory, called inside every run, reads the same cache
        os.environ["LPFT_LAB_CACHE"] = str(Path(args.cache_dir).resolve())
    grid, methods = _grid(args, extra)
    tags = default_tags(grid)
    out = Path(args.out)
    plan = plan_lab(out, tags, grid.seeds, methods=methods, lrs=grid.lrs, extra_args=grid.extra_args)
    todo = sum(not r.is_complete() for r in plan.all_runs)
    print(f"[lab] settings {', '.join(tags)}; seeds {list(grid.seeds)}; {len(plan.all_runs)} runs, "
          f"{len(plan.all_runs) - todo} already complete, into {out}")
    if args.dry_run:
        for r in plan.all_runs:
            print(("(complete) " if r.is_complete() else "") + "python -m lpft.vision.run " + " ".join(r.launch_argv()))
        return {"plan": plan}
    timings: dict[str, float] = {}
    status: dict = {}
    pre: dict = {}
    if not args.report_only:
        t0 = time.time()
        pre = pretrain_settings(plan, cache_dir=args.cache_dir)
        timings["pretraining_s"] = time.time() - t0
        t0 = time.time()
        status = run_lab(plan, keep_going=args.keep_going)
        timings["runs_s"] = time.time() - t0
    results = [read_setting(plan.setting_dir(t), t) for t in tags if plan.setting_dir(t).is_dir()]
    table = format_report(results)
    summary = {
        "grid": {"budgets": list(grid.budgets), "shares": list(grid.shares), "share": grid.share,
                 "full_budget": grid.full_budget, "seeds": list(grid.seeds), "lrs": grid.lrs,
                 "extra_args": list(grid.extra_args), "methods": list(methods)},
        "settings": [setting_summary(r) for r in results],
        "pretraining": {f"{t}|seed{s}": v for (t, s), v in pre.items()},
        "timings": timings,
    }
    write_text_atomic(out / "lab_table.md", table)
    write_json_atomic(out / "lab_summary.json", summary)
    figures = lab_figure(results, out / "figures" / "lab", share=grid.share, full_budget=grid.full_budget) \
        if results else []
    print(table)
    for p in [out / "lab_table.md", out / "lab_summary.json", *figures]:
        print(p)
    return {"table": table, "summary": summary, "figures": figures, "status": status, "plan": plan}


def entry() -> None:
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
