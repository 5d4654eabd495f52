"""The GPU check: every CUDA path of the package once, with throughput ratios, in under 5 minutes, offline.

Random-init ``clip_vit_b16`` and ``resnet50`` (no downloads). It runs, and reports as it goes:

1. feature extraction vs a bare forward (``bench/features.py``) in fp32 and bf16, channels-last, with pinned
   memory and loader workers;
2. the engine's training step vs a bare forward + backward + step loop (``bench/engine.py``; target >= 0.95)
   in fp32 and bf16;
3. the L-BFGS linear probe on the GPU against the same solve on the CPU (same C, predictions agree);
4. WiSE-FT interpolation of the ViT-B/16 classifier on the GPU and an evaluation of the mixed model;
5. one end-to-end ``torchrun --nproc_per_node=1`` run of ``python -m lpft.vision.run`` (FT, tiny_clip, digits).

    python bench/gpu.py                     # on a machine with one GPU
    python bench/gpu.py --smoke --device cpu   # the same code paths at toy sizes, to check the script itself

Prints one block per check and a summary with every ratio; exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402


def check_features(args, summary):
    import features as bf

    for precision in ("fp32", "bf16"):
        for name, size in (("clip_vit_b16", 224), ("resnet50", 224)):
            if args.smoke:
                name, size = "tiny_clip", 32
            argv = ["--backbone", name, "--image-size", str(size), "--n", str(args.n), "--batch-size",
                    str(args.batch), "--device", args.device, "--repeats", "3", "--num-workers", str(args.workers),
                    "--pretrained", "none"]
            argv += ["--precision", precision]
            try:
                res = bf.main(argv)
            except SystemExit as e:  # older flag sets: report instead of dying
                raise RuntimeError(f"bench/features.py rejected {argv}: exit {e.code}") from None
            summary[f"features {name} {precision}"] = res["ratio"]
            if args.smoke:
                break


def check_engine(args, summary):
    import engine as be

    for precision in (["fp32"] if args.smoke else ["fp32", "bf16"]):
        names = "tiny_clip" if args.smoke else "clip_vit_b16,resnet50"
        res = be.main(["--backbones", names, "--n", str(args.n), "--batch-size", str(args.batch), "--epochs", "1",
                       "--repeats", "3", "--device", args.device, "--precision", precision,
                       *([] if args.smoke else ["--image-size", "224"])])
        for r in res:
            summary[f"engine {r['backbone']} {precision}"] = r["ratio"]


def check_linear_probe(args, summary):
    from lpft.vision.linear_probe import linear_probe

    g = torch.Generator().manual_seed(0)
    n, d, k = (512, 64, 5) if args.smoke else (20000, 768, 100)
    centers = torch.randn(k, d, generator=g) * 2
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g) * 3
    cs = [1e-3, 1e-2, 1e-1]
    t0 = time.perf_counter()
    gpu = linear_probe(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:], Cs=cs, num_classes=k,
                       device=torch.device(args.device), progress=False)
    t_gpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu = linear_probe(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:], Cs=cs, num_classes=k,
                       device=torch.device("cpu"), progress=False)
    t_cpu = time.perf_counter() - t0
    agree = ((x @ gpu.weight.T + gpu.bias).argmax(1) == (x @ cpu.weight.T + cpu.bias).argmax(1)).float().mean()
    print(f"linear probe: {args.device} {t_gpu:.2f}s vs cpu {t_cpu:.2f}s, C {gpu.C:g} vs {cpu.C:g}, "
          f"prediction agreement {100 * agree:.2f}%")
    assert gpu.C == cpu.C and agree > 0.99, "GPU and CPU linear probes disagree"
    summary["linear probe cpu/gpu time"] = t_cpu / t_gpu


def check_wiseft(args, summary):
    from lpft.vision.backbones import Classifier, create_backbone
    from lpft.vision.engine import interpolate_state_dicts, predict
    from features import PremadeImages

    device = torch.device(args.device)
    name, size = ("tiny_clip", 32) if args.smoke else ("clip_vit_b16", 224)
    torch.manual_seed(0)
    model = Classifier(create_backbone(name, pretrained="none"), 10).to(device)
    th0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    th1 = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in th0.items()}
    t0 = time.perf_counter()
    mid = interpolate_state_dicts(th0, th1, 0.5)
    model.load_state_dict(mid)
    ds = PremadeImages(torch.randn(args.n, 3, size, size), torch.randint(0, 10, (args.n,)))
    for precision in ("fp32", "bf16"):
        logits, _ = predict(model, ds, batch_size=args.batch, device=device, progress=False, precision=precision)
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all(), "non-finite or non-fp32 logits"
    print(f"WiSE-FT: interpolated {len(mid)} tensors and evaluated {args.n} images twice in "
          f"{time.perf_counter() - t0:.2f}s; logits fp32 in both precisions")
    summary["wiseft interpolate+eval s"] = time.perf_counter() - t0


def check_torchrun(args, summary):
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
               "lpft.vision.run", "--method", "ft", "--backbone", "tiny_clip", "--limit", "256", "--epochs", "2",
               "--device", args.device, "--out", d, "--quiet", "--no-distortion"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        print(out.stdout[-1500:])
        if out.returncode != 0:
            raise RuntimeError(f"torchrun failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
        summary["torchrun 1 rank s"] = time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="toy sizes (checks the script on a CPU)")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    args.n = args.n or (64 if args.smoke else 1024)
    args.batch = args.batch or (32 if args.smoke else 128)
    if args.smoke:
        args.workers = 0
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("CUDA is not available: run with --smoke --device cpu to check the script", file=sys.stderr)
            return 2
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    summary: dict[str, float] = {}
    failed = []
    t_start = time.perf_counter()
    for check in (check_features, check_engine, check_linear_probe, check_wiseft, check_torchrun):
        print(f"\n=== {check.__name__} ===", flush=True)
        try:
            check(args, summary)
        except Exception:  # noqa: BLE001 - report every failing path, then exit non-zero
            traceback.print_exc()
            failed.append(check.__name__)
    print(f"\n=== summary ({time.perf_counter() - t_start:.0f} s) ===")
    for k, v in summary.items():
        print(f"{k:>40}: {v:.3f}")
    print("failed: " + (", ".join(failed) if failed else "none"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
