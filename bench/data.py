"""Loader throughput: ``make_loader`` images/s on a folder of JPEGs against bare PIL decoding of the same files.

Usage::

    python bench/data.py                       # makes 2000 JPEGs (256x256) in a temp folder
    python bench/data.py --folder DIR --workers 2 --batch-size 64 --json out.json

Both sides decode every file to an RGB image; the loader additionally converts it to a uint8 tensor,
batches it and ships it from its worker processes. The loader's number is a steady-state pass (its
persistent workers already started); the first pass, which includes starting the workers, is printed
too. The ratio loader / PIL is the figure of merit (target >= 0.9 with 2 workers on 2 cores). Wall-clock
numbers depend on what else runs on the machine, so CPU-time costs per image are printed as well, with
the ratio they imply when the workers have their cores to themselves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from lpft.vision.data.folders import ImageDataset, is_image_file
from lpft.vision.data.loader import collate_images, make_loader
from lpft.vision.io import write_json_atomic


def make_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` natural-ish JPEGs (smooth gradients plus noise) of ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        base = np.stack([xx * 255 * rng.random(), yy * 255 * rng.random(), (xx + yy) * 127 * rng.random()], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"img_{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def bare_pil(paths: list[Path]) -> float:
    """Images/s decoding every file with PIL in this process (the usual ``open(...).convert("RGB")``)."""
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.convert("RGB")
    return len(paths) / (time.perf_counter() - t)


def cpu_seconds_per_image(paths: list[Path], ds, batch_size: int) -> tuple[float, float]:
    """CPU seconds per image of bare PIL decoding and of the loader's per-worker pipeline (one thread).

    Measured with ``time.process_time`` so it does not depend on what else the machine runs; the
    pipeline is what a worker does: ``dataset[i]`` (decode + transform) and the batch collation.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.process_time()
        for p in paths:
            with Image.open(p) as im:
                im.convert("RGB")
        pil = (time.process_time() - t) / len(paths)
        t = time.process_time()
        for k in range(0, len(ds), batch_size):
            collate_images([ds[i] for i in range(k, min(k + batch_size, len(ds)))])
        pipe = (time.process_time() - t) / len(ds)
    finally:
        torch.set_num_threads(threads)
    return pil, pipe


def loader_pass(loader) -> float:
    t = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; prints and returns the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="folder of JPEGs (default: generate --n of them)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="LP-FT trains at batch 64")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per side; the best is kept")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            paths = sorted(p for p in args.folder.iterdir() if is_image_file(p.name))
        else:
            paths = make_jpegs(Path(tmp), args.n, args.size)
        if not paths:
            raise SystemExit(f"no images in {args.folder}")
        ds = ImageDataset([(str(p), 0) for p in paths], ["x"], pil_to_tensor)
        loader = make_loader(ds, args.batch_size, shuffle=False, num_workers=args.workers)
        first = loader_pass(loader)  # includes starting the workers
        bare_pil(paths[: min(50, len(paths))])  # warm the page cache / PIL
        pil, ldr = [], []
        for _ in range(args.repeats):  # interleaved, so background load hits both alike
            pil.append(bare_pil(paths))
            ldr.append(loader_pass(loader))
        cpu_pil, cpu_pipe = cpu_seconds_per_image(paths, ds, args.batch_size)
        res = {
            "images": len(paths),
            "workers": args.workers,
            "batch_size": args.batch_size,
            "pil_images_per_s": max(pil),
            "loader_images_per_s": max(ldr),
            "loader_first_pass_images_per_s": first,
            "ratio": max(ldr) / max(pil),
            "cpu_ms_per_image_pil": 1e3 * cpu_pil,
            "cpu_ms_per_image_loader_pipeline": 1e3 * cpu_pipe,
            # what the ratio would be with `workers` idle cores for the workers (IPC cost not included)
            "ratio_estimate_idle_cores": args.workers * cpu_pil / cpu_pipe,
        }
    print(f"{res['images']} JPEGs, {args.workers} workers, batch {args.batch_size}")
    print(f"bare PIL decode : {res['pil_images_per_s']:8.1f} images/s")
    print(f"make_loader     : {res['loader_images_per_s']:8.1f} images/s (first pass incl. worker start: {first:.1f})")
    print(f"ratio loader/PIL: {res['ratio']:.2f}  (target >= 0.9)")
    print(f"CPU ms/image    : PIL {res['cpu_ms_per_image_pil']:.2f}, loader pipeline "
          f"{res['cpu_ms_per_image_loader_pipeline']:.2f} -> ratio with {args.workers} idle cores "
          f"~{res['ratio_estimate_idle_cores']:.2f}")
    if args.json:
        write_json_atomic(args.json, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
