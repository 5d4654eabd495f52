"""CIFAR-10 with two OOD test sets: STL-10 (CIFAR->STL, LP-FT) and CIFAR-10.1 v6 (Recht et al. 2018).

Splits:

* ``id_train`` / ``id_val``: CIFAR-10 train (50,000), 10% held out for validation (seed
  :data:`~lpft.vision.data.folders.HOLDOUT_SEED`); with ``selection="paper"`` ``id_train`` is all 50,000
  and ``id_val`` is ``id_test``, as the official code selects on ``val_metric='test_acc/cifar10-test'``
  (transfer_learning ``scripts/run_adaptation_experiments.py:840-843``);
* ``id_test``: CIFAR-10 test (10,000);
* ``stl10``: STL-10 test (8,000) with labels mapped into CIFAR-10's space by LP-FT's table
  ``[0, 2, 1, 3, 4, 5, 7, -1, 8, 9]``: 'monkey' dropped (7,200 kept), 'car' -> 'automobile'; the head stays
  10-way (CIFAR 'frog' never occurs);
* ``cifar10_1``: CIFAR-10.1 v6 (2,000), CIFAR-10 labels.

Layout: ``cifar-10-batches-py/`` (the python archive), ``stl10_binary/`` (the binary archive) and
``CIFAR-10.1/cifar10.1_v6_{data,labels}.npy``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from lpft.vision.data.base import Benchmark, register_benchmark
from lpft.vision.data.folders import ImageDataset, find_dir, incomplete, load_facts, select_train, train_val_sizes

CIFAR_VAL_FRACTION = 0.1
CIFAR_DIRS = ["cifar-10-batches-py", "cifar10_dataset/cifar-10-batches-py", "cifar10/cifar-10-batches-py"]
STL_DIRS = ["stl10_binary", "stl10_dataset/stl10_binary"]
CIFAR101_DIRS = ["CIFAR-10.1", "cifar10.1", "CIFAR-10.1/datasets", "."]
CIFAR_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST_FILES = ["test_batch"]
CIFAR101_VERSION = "v6"

LAYOUT = """\
  cifar-10-batches-py/{data_batch_1..5,test_batch}   (cifar-10-python.tar.gz)
  stl10_binary/{test_X.bin,test_y.bin}                (stl10_binary.tar.gz)
  CIFAR-10.1/cifar10.1_v6_data.npy, cifar10.1_v6_labels.npy"""


def stl_to_cifar() -> list[int]:
    """LP-FT's STL->CIFAR label table (-1 = dropped)."""
    return list(load_facts("cifar_stl")["lpft_cifar_to_stl"]["stl_to_cifar_indices"])


def official_counts(selection: str = "heldout") -> dict[str, int]:
    """Official image count per split under ``selection``."""
    f = load_facts("cifar_stl")
    tr, va = train_val_sizes(f["cifar10"]["counts"]["train"], f["cifar10"]["counts"]["test"], selection, CIFAR_VAL_FRACTION)
    return {
        "id_train": tr,
        "id_val": va,
        "id_test": f["cifar10"]["counts"]["test"],
        "stl10": f["lpft_cifar_to_stl"]["resulting_counts"]["stl_test_kept"],
        "cifar10_1": f["cifar10_1"]["counts"][CIFAR101_VERSION],
    }


def read_cifar_batches(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) from CIFAR-10 python pickles."""
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        data = d.get(b"data", d.get("data"))
        labels = d.get(b"labels", d.get("labels"))
        if data is None or labels is None:
            raise ValueError(f"{folder / name}: not a CIFAR-10 batch (no data/labels entries)")
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


class _ArrayImages:
    """Picklable ``index -> PIL image`` over an (N, H, W, 3) uint8 array (or a raw STL file)."""

    def __init__(self, array: np.ndarray | None = None, stl_file: str | None = None):
        self.array = array
        self.stl_file = stl_file
        self._mm = None

    def __getstate__(self):
        return {"array": self.array, "stl_file": self.stl_file, "_mm": None}

    def __call__(self, i: int) -> Image.Image:
        if self.stl_file is not None:
            if self._mm is None:
                self._mm = np.memmap(self.stl_file, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
            # channel-major, column-major storage -> (H, W, C)
            return Image.fromarray(np.ascontiguousarray(self._mm[i].transpose(2, 1, 0)))
        return Image.fromarray(self.array[i])


class CifarBenchmark(Benchmark):
    """CIFAR-10 -> STL-10 / CIFAR-10.1; see the module docstring."""

    def _cifar(self, root, split, selection):
        base = find_dir(root, CIFAR_DIRS)
        if base is None:
            raise self.missing(
                f"CIFAR-10 in {Path(root) / CIFAR_DIRS[0]}", f"not found; 0 of {official_counts(selection)[split]:,} images"
            )
        files = CIFAR_TEST_FILES if split == "id_test" else CIFAR_TRAIN_FILES
        absent = [f for f in files if not (base / f).is_file()]
        if absent:
            raise incomplete(
                self, f"CIFAR-10 batch files {', '.join(files)} in {base}",
                f"missing {', '.join(absent)}; found {len(files) - len(absent)} of {len(files)}",
            )
        x, y = read_cifar_batches(base, files)
        samples = [(i, int(t)) for i, t in enumerate(y)]
        info: dict = {"source": str(base)}
        if split in ("id_train", "id_val"):
            samples, hinfo = select_train(samples, split, selection, CIFAR_VAL_FRACTION)
            info.update(hinfo)
        return samples, _ArrayImages(array=x), info

    def _stl(self, root):
        base = find_dir(root, STL_DIRS)
        if base is None:
            raise self.missing(f"STL-10 binaries in {Path(root) / STL_DIRS[0]}", f"not found; 0 of {official_counts()['stl10']:,} images")
        xf, yf = base / "test_X.bin", base / "test_y.bin"
        absent = [p.name for p in (xf, yf) if not p.is_file()]
        if absent:
            raise incomplete(self, f"STL-10 test_X.bin and test_y.bin in {base}", f"missing {', '.join(absent)}")
        labels = np.fromfile(yf, dtype=np.uint8).astype(np.int64) - 1  # files hold 1..10
        n_img, rem = divmod(xf.stat().st_size, 3 * 96 * 96)
        if rem or n_img != len(labels):
            raise incomplete(
                self, f"STL-10 test set in {base}",
                f"test_X.bin holds {xf.stat().st_size / (3 * 96 * 96):.2f} images but test_y.bin {len(labels)} labels "
                f"(official {load_facts('cifar_stl')['stl10']['counts']['test']:,}); re-download",
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{yf}: STL-10 labels must be 1..10")
        table = stl_to_cifar()
        samples = [(i, table[s]) for i, s in enumerate(labels) if table[s] >= 0]
        info = {
            "source": str(base),
            "label_map": "STL label s -> CIFAR-10 label [0,2,1,3,4,5,7,-1,8,9][s]; monkey dropped",
            "stl_images": int(len(labels)),
            "dropped_monkey": int(len(labels) - len(samples)),
        }
        return samples, _ArrayImages(stl_file=str(xf)), info

    def _cifar101(self, root):
        dfile = f"cifar10.1_{CIFAR101_VERSION}_data.npy"
        lfile = f"cifar10.1_{CIFAR101_VERSION}_labels.npy"
        base = None
        for c in CIFAR101_DIRS:
            if (Path(root) / c / dfile).is_file() or (Path(root) / c / lfile).is_file():
                base = Path(root) / c
                break
        if base is None:
            raise self.missing(
                f"CIFAR-10.1 {dfile} and {lfile} in {Path(root) / CIFAR101_DIRS[0]}",
                f"not found; 0 of {official_counts()['cifar10_1']:,} images",
            )
        absent = [f for f in (dfile, lfile) if not (base / f).is_file()]
        if absent:
            raise incomplete(self, f"CIFAR-10.1 files in {base}", f"missing {', '.join(absent)}")
        x = np.load(base / dfile)
        y = np.load(base / lfile)
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            raise ValueError(f"{base}: CIFAR-10.1 data must be (N, 32, 32, 3) with N labels, got {x.shape} and {y.shape}")
        samples = [(i, int(t)) for i, t in enumerate(y)]
        return samples, _ArrayImages(array=x.astype(np.uint8)), {"source": str(base), "version": CIFAR101_VERSION}

    def read_split(self, root, split, transform, *, selection, options):
        if split == "stl10":
            samples, images, info = self._stl(root)
        elif split == "cifar10_1":
            samples, images, info = self._cifar101(root)
        else:
            samples, images, info = self._cifar(root, split, selection)
        info["official_size"] = official_counts(selection)[split]
        return ImageDataset(samples, self.classnames, transform, split_info=info, loader=images)


CIFAR10 = register_benchmark(
    CifarBenchmark(
        name="cifar10",
        classnames=list(load_facts("cifar_stl")["cifar10"]["classnames"]),
        splits={"id_train": "id", "id_val": "id", "id_test": "id", "stl10": "ood", "cifar10_1": "ood"},
        layout=LAYOUT,
        how_to_get="python -m lpft.vision.data download cifar10 --root DIR",
        paper_selection="CIFAR-10 test (= id_test; official val_metric test_acc/cifar10-test)",
    )
)
