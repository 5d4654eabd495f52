"""SimCLR pretraining of the lab backbone on the unlabelled pool, cached by its config hash.

SimCLR (Chen, Kornblith, Norouzi, Hinton 2020): two random views of every pool image, a backbone and a
projection head, and the NT-Xent loss that makes each view pick out its partner among the ``2B - 1`` other
views of the batch. The recipe (docs/lab.md, "Pretraining"): batch 256, temperature 0.2, AdamW with a one-cycle
schedule peaking at lr 2e-3, the augmentations of :mod:`lpft.vision.lab.augment`, projection 64 -> 128 -> 64.

A run is a pure function of its :class:`SimCLRConfig` (on CPU, for a given torch build and thread count): the
initialisation, the pool draws and the augmentations all come from generators seeded by ``config.seed``. The
result is cached as ``digits_simclr-<key>.pt`` (``key`` = a hash of the config) in the cache directory
(``$LPFT_LAB_CACHE``, else ``$XDG_CACHE_HOME/lpft/lab``, else ``~/.cache/lpft/lab``), so it runs once; the
package ships the default config's checkpoint in ``lpft/vision/lab/weights/`` (see ``MANIFEST.json`` there
for its sha256 and the command that reproduces it), which is used when the cache has none.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lpft.vision.io import torch_save_atomic
from lpft.vision.lab.augment import AugmentConfig, augment
from lpft.vision.lab.model import LabResNet, ProjectionHead
from lpft.vision.lab.pool import build_pool

__all__ = ["CODE_VERSION", "PRETRAIN_THREADS", "WEIGHTS_DIR", "PretrainResult", "SimCLRConfig", "default_cache_dir",
           "nt_xent", "pretrain", "state_digest"]

#: bump when a change of this code changes what a config trains (it is part of the key)
CODE_VERSION = 2
#: pretraining runs on one CPU thread. The reduction order of oneDNN's kernels depends on the thread count, so one
#: fixed count makes a config's weights the same on machines with any number of cores (same torch build and CPU
#: kind); and for this 120k-parameter network one thread is as fast as two on idle cores and several times faster
#: on shared ones (OpenMP barriers wait for the other process; measured 4.8 s vs 55 s for 30 steps).
PRETRAIN_THREADS = 1
#: the checkpoints shipped with the package, with ``MANIFEST.json``
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class SimCLRConfig:
    """Everything that determines a pretrained lab backbone."""

    steps: int = 2000  #: optimisation steps (0: the random initialisation itself)
    typeset_share: float = 0.2  #: probability that a batch item is a typeset render (the pool knob)
    seed: int = 0
    batch_size: int = 256  #: images per step (2 views each)
    temperature: float = 0.2
    lr: float = 2e-3  #: one-cycle peak learning rate of AdamW
    weight_decay: float = 1e-4
    width: int = 16  #: LabResNet width (features: 4 * width)
    proj_hidden: int = 128
    proj_dim: int = 64
    typeset_variants: int = 20  #: typeset renders per (font, digit) in the pool
    pool_stream: int = 1  #: random stream of the pool's renders (0 would be the evaluated split)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    version: int = CODE_VERSION

    def __post_init__(self):
        for name in ("steps", "seed", "batch_size", "width", "proj_hidden", "proj_dim", "typeset_variants",
                     "pool_stream"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"SimCLRConfig.{name} must be an integer, got {v!r}")
        if self.steps < 0 or self.seed < 0:
            raise ValueError(f"steps and seed must be >= 0, got steps={self.steps}, seed={self.seed}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (NT-Xent needs negatives), got {self.batch_size}")
        if not 0.0 <= self.typeset_share <= 1.0:
            raise ValueError(f"typeset_share must lie in [0, 1], got {self.typeset_share}")
        if not (self.temperature > 0 and self.lr > 0 and self.weight_decay >= 0):
            raise ValueError("temperature and lr must be > 0 and weight_decay >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @property
    def key(self) -> str:
        """16 hex digits of the sha256 of the config (canonical JSON): the cache key."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def filename(self) -> str:
        return f"digits_simclr-{self.key}.pt"


@dataclass
class PretrainResult:
    """A pretrained backbone: its network, where it came from and how its loss went."""

    net: LabResNet
    config: SimCLRConfig
    source: str  #: "init" (steps 0), "cache", "shipped" or "trained"
    path: Path | None
    history: list[dict[str, float]]  #: ``{"step", "loss", "lr"}`` rows, mean loss over each logging window
    seconds: float  #: training time (of the run that made the checkpoint)


def default_cache_dir() -> Path:
    """``$LPFT_LAB_CACHE``, else ``$XDG_CACHE_HOME/lpft/lab``, else ``~/.cache/lpft/lab``."""
    if os.environ.get("LPFT_LAB_CACHE"):
        return Path(os.environ["LPFT_LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lpft" / "lab"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """12 hex digits of the sha256 over a state dict's keys and tensor bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020, Eq. 1) averaged over the ``2B`` views.

    Args:
        z1 / z2: ``[B, D]`` projections of the two views (row ``i`` of both comes from the same image).
        temperature: the softmax temperature tau.

    Returns:
        Scalar: mean over views of ``-log softmax`` of the partner's cosine similarity / tau among the other
        ``2B - 1`` views.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two [B, D] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, partner)


def _init(cfg: SimCLRConfig) -> tuple[LabResNet, ProjectionHead]:
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(cfg.seed)
        net = LabResNet(cfg.width)
        head = ProjectionHead(net.feature_dim, cfg.proj_hidden, cfg.proj_dim)
    return net, head


def _train(cfg: SimCLRConfig, progress: bool) -> tuple[LabResNet, list[dict[str, float]], float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _train_loop(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train_loop(cfg: SimCLRConfig, progress: bool) -> tuple[LabResNet, list[dict[str, float]], float]:
    from lpft.vision.progress import tqdm

    net, head = _init(cfg)
    pool = build_pool(cfg.typeset_share, cfg.typeset_variants, cfg.pool_stream)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    net.train(), head.train()
    history: list[dict[str, float]] = []
    window: list[float] = []
    log_every = max(1, min(50, cfg.steps // 20))
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc=f"SimCLR {cfg.key}", unit="step", disable=not progress, leave=False)
    for step in bar:
        x = pool.sample(cfg.batch_size, g)
        views = torch.cat([augment(x, cfg.augment, g), augment(x, cfg.augment, g)])
        z = head(net(views))
        loss = nt_xent(z[: cfg.batch_size], z[cfg.batch_size:], cfg.temperature)
        if not torch.isfinite(loss):
            raise RuntimeError(f"SimCLR loss became {loss.item()} at step {step} (config {cfg.to_dict()}); "
                               f"try a smaller lr")
        lr = opt.param_groups[0]["lr"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == log_every or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": sum(window) / len(window), "lr": lr})
            bar.set_postfix_str(f"loss {history[-1]['loss']:.3f}", refresh=False)
            window = []
    net.eval()
    return net, history, time.time() - t0


def _read(path: Path, cfg: SimCLRConfig) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is readable and holds ``cfg``; None (with a warning) if unreadable."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged cache file is retrained, not fatal
        warnings.warn(f"digits_simclr: ignoring unreadable checkpoint {path}: {err}", stacklevel=3)
        return None
    if not isinstance(ck, dict) or ck.get("config") != cfg.to_dict():
        raise ValueError(f"{path} is named for config key {cfg.key} but holds another config; remove it")
    return ck


def _shipped_sha256(name: str) -> str | None:
    manifest = WEIGHTS_DIR / "MANIFEST.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("files", {}).get(name, {}).get("sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain(cfg: SimCLRConfig, cache_dir: str | os.PathLike | None = None, *, progress: bool = True,
             use_shipped: bool = True) -> PretrainResult:
    """The pretrained lab backbone of ``cfg``: from the cache, the shipped weights, or trained now (then cached).

    Args:
        cfg: the pretraining config.
        cache_dir: where checkpoints are cached (default :func:`default_cache_dir`).
        progress: show a progress bar while training.
        use_shipped: look in the package's ``weights/`` folder when the cache has no checkpoint.

    Returns:
        A :class:`PretrainResult` with the backbone network in eval mode. ``steps == 0`` returns the seeded
        random initialisation (source ``"init"``) without touching any file.

    Raises:
        ValueError: a cached file carries this config's name but another config, or a shipped file does not
            match the sha256 in ``MANIFEST.json``.
    """
    if cfg.steps == 0:
        return PretrainResult(_init(cfg)[0].eval(), cfg, "init", None, [], 0.0)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / cfg.filename
    sources = [(path, "cache")]
    if use_shipped:
        sources.append((WEIGHTS_DIR / cfg.filename, "shipped"))
    for candidate, source in sources:
        if not candidate.is_file():
            continue
        if source == "shipped":
            expected = _shipped_sha256(cfg.filename)
            if expected is None or _sha256(candidate) != expected:
                raise ValueError(f"shipped checkpoint {candidate} does not match the sha256 in "
                                 f"{WEIGHTS_DIR / 'MANIFEST.json'}; reinstall the package")
        ck = _read(candidate, cfg)
        if ck is None:
            continue
        net = LabResNet(cfg.width)
        net.load_state_dict(ck["state_dict"])
        return PretrainResult(net.eval(), cfg, source, candidate, list(ck.get("history", [])),
                              float(ck.get("seconds", 0.0)))
    net, history, seconds = _train(cfg, progress)
    torch_save_atomic({"state_dict": net.state_dict(), "config": cfg.to_dict(), "history": history,
                       "seconds": seconds, "torch": str(torch.__version__), "threads": PRETRAIN_THREADS}, path)
    return PretrainResult(net, cfg, "trained", path, history, seconds)


def main(argv: list[str] | None = None) -> PretrainResult:
    """``python -m lpft.vision.lab.pretrain --tag TAG --seed S [--cache-dir DIR] [--threads N] [--no-shipped]``:
    pretrain one setting (or find it cached) and print its file, sha256 and weights digest."""
    import argparse

    from lpft.vision.lab.backbone import DEFAULT_TAG, config_from_tag

    ap = argparse.ArgumentParser(prog="python -m lpft.vision.lab.pretrain", description=main.__doc__.split(":")[0])
    ap.add_argument("--tag", default=DEFAULT_TAG, help=f"pretraining setting (default {DEFAULT_TAG})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="default $LPFT_LAB_CACHE or ~/.cache/lpft/lab")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-shipped", action="store_true", help="train even when the package ships the checkpoint")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = config_from_tag(args.tag, args.seed)
    res = pretrain(cfg, args.cache_dir, use_shipped=not args.no_shipped)
    print(f"{args.tag} seed {cfg.seed}: {res.source} {res.path or '(random init)'}")
    if res.path is not None:
        print(f"sha256 {_sha256(res.path)}; weights digest {state_digest(res.net.state_dict())}; "
              f"training {res.seconds:.0f}s; SimCLR loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f}")
    return res


if __name__ == "__main__":
    main()
