"""Run several ``lpft.vision.run`` invocations inside one torchrun process group (tests/vision/test_ddp.py).

Usage: ``torchrun --standalone --nproc_per_node=N tests/vision/ddp_worker.py SPEC.json`` where SPEC.json is a
list of argv lists. One process group serves every run, so the test pays torchrun's start-up once.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    torch.set_num_threads(1)  # two ranks on a 2-core machine
    from lpft.vision.run import main as run_main

    for argv in json.loads(open(sys.argv[1]).read()):
        run_main(argv)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
