"""Run several ``lpft.vision.run`` invocations inside one torchrun process group (tests/vision/test_ddp.py).

Usage: ``torchrun --standalone --nproc_per_node=N tests/vision/ddp_worker.py SPEC.json`` where SPEC.json is a
list of argv lists (runs of ``python -m lpft.vision.run``) or ``{"bn_check": PATH}`` entries (re-estimate the
BatchNorm statistics of a seeded ``tiny_cnn`` classifier on 100 digits and save each rank's statistics to
``PATH.rank<r>.pt``). One process group serves every entry, so the test pays torchrun's start-up once.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bn_check(path: str) -> None:
    """What every rank holds after WiSE-FT's BatchNorm re-estimation (see test_ddp.py)."""
    import torch

    from lpft.vision.backbones import Classifier, create_backbone
    from lpft.vision.data import load_split
    from lpft.vision.distributed import init_from_env, rank_world
    from lpft.vision.interpolate import recompute_batchnorm

    device = init_from_env(torch.device("cpu"))
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", image_size=32, augment=False)
    model = Classifier(backbone, 10)
    ds = torch.utils.data.Subset(load_split("digits", None, "id_train", backbone.eval_transform), range(100))
    recompute_batchnorm(model, ds, batch_size=16, device=device, seed=3)
    bn = {k: v for k, v in model.state_dict().items() if "running" in k}
    torch.save(bn, f"{path}.rank{rank_world()[0]}.pt")


def main() -> None:
    import torch

    torch.set_num_threads(1)  # two ranks on a 2-core machine
    from lpft.vision.run import main as run_main

    for entry in json.loads(open(sys.argv[1]).read()):
        if isinstance(entry, dict):
            bn_check(entry["bn_check"])
        else:
            run_main(entry)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
