"""Command line: ``python -m lpft.vision.data {download,check,list} ...``.

* ``download NAME --root DIR``: fetch a benchmark's (or one dataset's) public data into DIR, resumably and
  checksum-verified, or print what to fetch by hand (ImageNet, ObjectNet).
* ``check --root DIR [--benchmark NAME ...] [--selection heldout|paper] [--fmow-val id|ood] [--verify-images]``:
  per benchmark and split, found / missing / incomplete with image counts against the official ones (and,
  decoding every image, corrupt files), with id_train / id_val as the chosen selection set makes them.
  Exit status 0 when every checked split is found, else 1. ``--benchmark folder`` checks the user's own
  dataset under DIR (its splits, image and class counts, classes missing from each split).
* ``list``: benchmarks with their splits, and downloadable datasets.
"""

from __future__ import annotations

import argparse
import sys

from lpft.vision.data import get_benchmark, list_benchmarks
from lpft.vision.data.base import SELECTIONS
from lpft.vision.data.fmow import FMOW_VAL_READINGS


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from lpft.vision.data import download as dl
    from lpft.vision.data.check import check_root, format_report

    p = argparse.ArgumentParser(prog="python -m lpft.vision.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch a benchmark's or dataset's data into --root")
    d.add_argument("name", help=f"benchmark ({', '.join(dl.BENCHMARK_DATASETS)}) or dataset ({', '.join(dl.DATASETS)})")
    d.add_argument("--root", required=True, help="the data root (the runner's --data-root)")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--keep-archives", action="store_true", help="keep the archives in DIR/.downloads after extraction")
    c = sub.add_parser("check", help="report what is present under --root")
    c.add_argument("--root", required=True)
    c.add_argument("--benchmark", action="append", help="only these benchmarks (repeatable)")
    c.add_argument("--selection", choices=SELECTIONS, default="heldout",
                   help="heldout: part of train held out as id_val; paper: full train, official selection set as id_val")
    c.add_argument("--fmow-val", choices=tuple(FMOW_VAL_READINGS), default=None,
                   help="which WILDS FMoW split LP-FT's 'val' is: id (wilds 1.1.0, default) or ood (wilds >= 1.2.1)")
    c.add_argument("--verify-images", action="store_true", help="decode every image and report corrupt files (slow)")
    sub.add_parser("list", help="list benchmarks and datasets")
    args = p.parse_args(argv)

    if args.cmd == "list":
        for n in list_benchmarks():
            b = get_benchmark(n)
            if b.root_defined:
                print(f"{n}: classes and OOD splits read from --data-root; splits "
                      + ", ".join(f"{s} ({sh})" for s, sh in b.splits.items()) + ", <ood_name> (ood) ...")
                print("  layout under --data-root:\n" + "\n".join("  " + line for line in b.layout.splitlines()))
                continue
            print(f"{n}: {b.num_classes} classes; splits " + ", ".join(f"{s} ({sh})" for s, sh in b.splits.items()))
            print(f"  paper selection set: {b.paper_selection or 'none (paper uses the held-out id_val)'}")
            for opt, values in b.options.items():
                print(f"  option {opt}: {' | '.join(values)} (default {values[0]})")
        print("datasets: " + ", ".join(dl.DATASETS))
        return 0
    if args.cmd == "download":
        try:
            dl.download(args.name, args.root, progress=not args.no_progress, keep_archives=args.keep_archives)
        except (ValueError, ImportError, OSError, dl.ChecksumError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"next: python -m lpft.vision.data check --root {args.root}")
        return 0
    try:
        options = {} if args.fmow_val is None else {"fmow_val": args.fmow_val}
        rows = check_root(args.root, args.benchmark, selection=args.selection, options=options,
                          verify_images=args.verify_images, progress=args.verify_images)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(rows))
    return 0 if all(r.status == "found" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
