"""Throughput of the training engine relative to a bare forward + backward + step loop.

Measures :func:`lpft.vision.engine.train` (seeded loader, per-step schedule, autocast choice, clipping, loss
bookkeeping, the ID-val pass and the atomic checkpoints after every epoch) against a bare loop over slices of
the same pre-made image tensor with the same model, batch, optimiser and number of steps. Images are made
once and the dataset's transform is the identity, so the ratio isolates the engine's own overhead.

    python bench/engine.py                                   # efficientnet_lite0 at 64 px and tiny_clip, CPU
    python bench/engine.py --backbones tiny_clip --n 512 --epochs 2 --repeats 5
    python bench/engine.py --device cuda --n 4096 --batch-size 128 --precision bf16

Prints per-repeat timings and ``ratio = engine / bare`` throughput (target >= 0.95) from the medians and
from the fastest repeats (the least disturbed on a shared machine), plus where the remaining time goes.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from features import PremadeImages  # noqa: E402  (bench/features.py)


def bare_train(model, images, labels, *, epochs: int, batch_size: int, lr: float, device, precision: str) -> None:
    """The reference loop: no loader, no schedule, no evaluation, no checkpoint."""
    from lpft.vision.distributed import autocast

    model.to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    n = len(images)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x, y = images[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_train(model, train_set: Dataset, val_set: Dataset, *, epochs: int, batch_size: int, lr: float, device,
                 precision: str, num_workers: int) -> float:
    """Time engine.train; returns the seconds spent in its per-epoch ID-val pass and checkpoints."""
    from lpft.vision import engine

    s = engine.TrainSettings(lr=lr, epochs=epochs, batch_size=batch_size, optimizer="sgd", momentum=0.9,
                             schedule="cosine_epoch", precision=precision, num_workers=num_workers,
                             eval_batch_size=256)
    t_eval = [0.0]
    orig = engine.predict

    def timed_predict(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            t_eval[0] += time.perf_counter() - t0

    engine.predict = timed_predict
    try:
        with tempfile.TemporaryDirectory() as d:
            engine.train(model, train_set, val_set, s, device=device, ckpt_dir=d, progress=False)
    finally:
        engine.predict = orig
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return t_eval[0]


def bench_one(name: str, args, device) -> dict:
    from lpft.vision.backbones import Classifier, create_backbone

    torch.manual_seed(0)
    size = args.image_size or (64 if name == "efficientnet_lite0" else 32)
    pretrained = None if name == "efficientnet_lite0" else "none"
    backbone = create_backbone(name, image_size=size, augment=False, pretrained=pretrained)
    base = Classifier(backbone, 10)
    images = torch.randn(args.n, 3, size, size)
    labels = torch.randint(0, 10, (args.n,))
    train_set = PremadeImages(images, labels)
    val_set = PremadeImages(images[: args.n_val], labels[: args.n_val])
    times: dict[str, list[float]] = {"engine": [], "bare": []}
    evals = []
    for r in range(args.repeats):
        for key in (("engine", "bare") if r % 2 == 0 else ("bare", "engine")):
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            if key == "engine":
                evals.append(engine_train(model, train_set, val_set, epochs=args.epochs, batch_size=args.batch_size,
                                          lr=1e-3, device=device, precision=args.precision,
                                          num_workers=args.num_workers))
            else:
                bare_train(model, images, labels, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                           device=device, precision=args.precision)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    res = {"backbone": name, "image_size": size, "ratio": med["bare"] / med["engine"],
           "ratio_best": best["bare"] / best["engine"], "times_s": times,
           "eval_share": statistics.median(evals) / med["engine"]}
    # the bare loop evaluates nothing: the same ratio with the engine's per-epoch ID-val passes taken out
    res["ratio_train_only"] = med["bare"] / (med["engine"] - statistics.median(evals))
    for k in ("engine", "bare"):
        print(f"  {name:>18} {k:>6}: " + " ".join(f"{t:.2f}s" for t in times[k]) + f"  median {med[k]:.2f}s")
    print(f"  {name}: ratio (engine / bare throughput) median {res['ratio']:.3f}, best {res['ratio_best']:.3f} "
          f"(target >= 0.95); per-epoch ID-val passes take {100 * res['eval_share']:.1f}% of the "
          f"engine's time; without them the ratio is {res['ratio_train_only']:.3f}")
    return res


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="efficientnet_lite0,tiny_clip")
    p.add_argument("--n", type=int, default=512, help="training images")
    p.add_argument("--n-val", type=int, default=64, help="ID-val images evaluated after every epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lpft.vision.distributed import configure, resolve_device

    device = resolve_device(args.device)
    configure(device)
    print(f"device {device}, {torch.get_num_threads()} threads, n={args.n}, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.precision}")
    results = [bench_one(b.strip(), args, device) for b in args.backbones.split(",") if b.strip()]
    if args.json:
        from lpft.vision.io import write_json_atomic

        write_json_atomic(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
