"""Miniature copies of every benchmark in its real on-disk layout, for tests and smoke runs.

Each ``build_*`` writes a few tiny images per class with the real folder and file names under ``root``
and returns ``root``. The images are 8x8 (ObjectNet: 12x12 with a 2-px red border); array datasets
(CIFAR-10, STL-10, CIFAR-10.1) encode the label in the pixel values: every pixel of an image with label
``y`` has red channel ``25 * y`` and the top row is white, so label and orientation can be checked.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from lpft.vision.data.folders import load_facts

IMAGENET_SPLITS = ("train", "val", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet")
#: ObjectNet folders not mapped to ImageNet (the loader must ignore them)
OBJECTNET_UNMAPPED = ("squeegee", "coaster")


@functools.lru_cache(maxsize=None)
def tiny_image_bytes(fmt: str = "JPEG", size: int = 8, border: int = 0) -> bytes:
    """Encoded bytes of a small RGB image (green; a red ``border`` px frame when ``border > 0``)."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[..., 1] = 200
    if border:
        frame = np.ones((size, size), dtype=bool)
        frame[border:-border, border:-border] = False
        arr[frame] = (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _hexname(*parts) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


def build_imagenet(
    root,
    *,
    under_imagenet: bool = False,
    splits=IMAGENET_SPLITS,
    train_per_class: int = 1,
    per_class: int = 1,
    wnids: list[str] | None = None,
) -> Path:
    """ImageNet train/val and the five shift sets, ``per_class`` image(s) per class folder.

    Args:
        root: the data root.
        under_imagenet: put the shift sets under ``root/imagenet/`` (LP-FT) instead of ``root/``.
        splits: which of :data:`IMAGENET_SPLITS` to write.
        train_per_class: images per train class folder.
        per_class: images per class folder of the other sets.
        wnids: restrict train/val/sketch to these wnids (default: all 1000).
    """
    root = Path(root)
    jpg = tiny_image_bytes("JPEG")
    all_wnids = load_facts("imagenet_wnids")["wnids"]
    wn = list(wnids) if wnids is not None else all_wnids
    shift = root / "imagenet" if under_imagenet else root
    if "train" in splits:
        for w in wn:
            for k in range(train_per_class):
                _write(root / "imagenet" / "train" / w / f"{w}_{10000 + k}.JPEG", jpg)
    if "val" in splits:
        n = 0
        for w in wn:
            for _ in range(per_class):
                n += 1
                _write(root / "imagenet" / "val" / w / f"ILSVRC2012_val_{n:08d}.JPEG", jpg)
    if "imagenet_v2" in splits:
        for i in range(1000):
            for k in range(per_class):
                _write(shift / "imagenetv2-matched-frequency-format-val" / str(i) / f"{_hexname(i, k)}.jpeg", jpg)
    if "imagenet_sketch" in splits:
        for w in wn:
            for k in range(per_class):
                _write(shift / "sketch" / w / f"sketch_{k}.JPEG", jpg)
    if "imagenet_r" in splits:
        for w in load_facts("imagenet_r")["wnids"]:
            for k in range(per_class):
                _write(shift / "imagenet-r" / w / f"art_{k}.jpg", jpg)
    if "imagenet_a" in splits:
        for w in load_facts("imagenet_a")["wnids"]:
            for k in range(per_class):
                _write(shift / "imagenet-a" / w / f"0.{k:06d}_digital clock _ digital clock_0.865662.jpg", jpg)
    if "objectnet" in splits:
        png = tiny_image_bytes("PNG", size=12, border=2)
        folders = [c["folder"] for c in load_facts("objectnet")["classes"]] + list(OBJECTNET_UNMAPPED)
        for f in folders:
            for k in range(per_class):
                _write(shift / "objectnet-1.0" / "images" / f / f"{_hexname(f, k)}.png", png)
    return root


def build_breeds(root, name: str, *, train_per_subclass: int = 3, val_per_subclass: int = 1) -> Path:
    """Only the ImageNet train/val folders BREEDS benchmark ``name`` uses (a partial ImageNet)."""
    root = Path(root)
    jpg = tiny_image_bytes("JPEG")
    n = 0
    for c in load_facts("breeds")[name]["classes"]:
        for w in c["source_wnids"]:
            for k in range(train_per_subclass):
                _write(root / "imagenet" / "train" / w / f"{w}_{20000 + k}.JPEG", jpg)
        for w in c["source_wnids"] + c["target_wnids"]:
            for _ in range(val_per_subclass):
                n += 1
                _write(root / "imagenet" / "val" / w / f"ILSVRC2012_val_{n:08d}.JPEG", jpg)
    return root


def domainnet_rows(domain: str, part: str, per_class: int) -> list[tuple[str, int]]:
    """The ``(relative path, label)`` rows the miniature writes for one split file."""
    classes = load_facts("domainnet")["classnames"]
    offset = 0 if part == "train" else 500
    return [
        (f"{domain}/{c}/{domain}_{y + 1:03d}_{offset + k + 1:06d}.jpg", y)
        for y, c in enumerate(classes)
        for k in range(per_class)
    ]


def build_domainnet(root, *, train_per_class: int = 2, test_per_class: int = 1, subdir: str = "domainnet") -> Path:
    """The 8 SENTRY split files and their images under ``root/subdir`` (``subdir=""``: directly in root)."""
    base = Path(root) / subdir if subdir else Path(root)
    jpg = tiny_image_bytes("JPEG")
    for domain in load_facts("domainnet")["domains"]:
        for part, per in (("train", train_per_class), ("test", test_per_class)):
            rows = domainnet_rows(domain, part, per)
            lines = "".join(f"{rel} {y}\n" for rel, y in rows)
            _write(base / "SENTRY_splits" / f"{domain}_{part}_mini.txt", lines.encode())
            for rel, _ in rows:
                _write(base / rel, jpg)
    return Path(root)


def label_image(label: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 with red = 25 * label everywhere and a white top row."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[..., 0] = 25 * label
    arr[0] = 255
    return arr


def build_cifar(root, *, train_per_batch_per_class: int = 1, test_per_class: int = 2, stl_per_class: int = 2,
                cifar101_per_class: int = 2) -> Path:
    """CIFAR-10 python batches, STL-10 binaries and CIFAR-10.1 v6 npy files, labels encoded in pixels."""
    root = Path(root)
    cdir = root / "cifar-10-batches-py"
    cdir.mkdir(parents=True, exist_ok=True)

    def batch(per_class, name):
        labels = [y for y in range(10) for _ in range(per_class)]
        data = np.stack([label_image(y, 32).transpose(2, 0, 1).reshape(-1) for y in labels]).astype(np.uint8)
        with open(cdir / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]}, fh)

    for i in range(1, 6):
        batch(train_per_batch_per_class, f"data_batch_{i}")
    batch(test_per_class, "test_batch")
    with open(cdir / "batches.meta", "wb") as fh:
        names = load_facts("cifar_stl")["cifar10"]["classnames"]
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072, b"num_cases_per_batch": 10000}, fh)

    sdir = root / "stl10_binary"
    sdir.mkdir(parents=True, exist_ok=True)
    stl = [s for s in range(10) for _ in range(stl_per_class)]
    # STL stores each image channel-major and column-major: (3, W, H)
    x = np.stack([label_image(s, 96).transpose(2, 1, 0) for s in stl]).astype(np.uint8)
    (sdir / "test_X.bin").write_bytes(x.tobytes())
    (sdir / "test_y.bin").write_bytes(np.asarray([s + 1 for s in stl], dtype=np.uint8).tobytes())
    (sdir / "class_names.txt").write_text("\n".join(load_facts("cifar_stl")["stl10"]["classnames"]) + "\n")

    c101 = root / "CIFAR-10.1"
    c101.mkdir(parents=True, exist_ok=True)
    ys = [y for y in range(10) for _ in range(cifar101_per_class)]
    np.save(c101 / "cifar10.1_v6_data.npy", np.stack([label_image(y, 32) for y in ys]).astype(np.uint8))
    np.save(c101 / "cifar10.1_v6_labels.npy", np.asarray(ys, dtype=np.int32))
    return root


#: calendar year a :class:`FakeWildsFMoW` row gets when none is given, per WILDS split key (official scheme:
#: train / ID splits before 2013, OOD Val 2013-2015, OOD Test 2016-2017)
FAKE_FMOW_YEARS = {"train": 2010, "id_val": 2011, "id_test": 2012, "val": 2014, "test": 2016}


def wilds_fmow_split(metadata_split: str, year: int) -> str | None:
    """WILDS split key (``use_ood_val=True`` names) of a metadata row under the official time scheme.

    ``None`` for rows WILDS drops (sequestered ``seq`` rows, and rows outside their period).
    """
    if metadata_split == "train" and year < 2013:
        return "train"
    if metadata_split == "val":
        return "id_val" if year < 2013 else "val" if year < 2016 else None
    if metadata_split == "test":
        return "id_test" if year < 2013 else "test" if year >= 2016 else None
    return None


class FakeWildsFMoW:
    """A stand-in for ``wilds``' FMoW dataset object: the attributes the loader reads, on a small table.

    Args:
        rows: ``(wilds split key, region name, label)`` or ``(..., label, calendar year)`` per image
            (keys of the ``use_ood_val=True`` naming; the year defaults to :data:`FAKE_FMOW_YEARS`).
        region_names: the region vocabulary (``_metadata_map['region']``), order of first appearance in WILDS.
        use_ood_val: WILDS 2.0 names (``False`` renames 'val' -> ID val, like ``use_ood_val=False``).

    ``metadata_array`` columns are ``region, year, y`` with ``year`` counted from 2002, as in WILDS.
    """

    def __init__(self, rows, region_names=("Asia", "Europe", "Africa", "Americas", "Oceania", "Other"),
                 use_ood_val: bool = True):
        if use_ood_val:
            self.split_dict = {"train": 0, "id_val": 1, "id_test": 2, "val": 3, "test": 4}
            self.split_names = {"train": "Train", "id_val": "ID Val", "id_test": "ID Test", "val": "OOD Val",
                                "test": "OOD Test"}
        else:
            self.split_dict = {"train": 0, "val": 1, "id_test": 2, "ood_val": 3, "test": 4}
            self.split_names = {"train": "Train", "val": "ID Val", "id_test": "ID Test", "ood_val": "OOD Val",
                                "test": "OOD Test"}
        # the keys of the 'use_ood_val=True' naming are the ones rows are written with
        canonical = {"train": "Train", "id_val": "ID Val", "id_test": "ID Test", "val": "OOD Val", "test": "OOD Test"}
        by_display = {v: self.split_dict[k] for k, v in self.split_names.items()}
        self._metadata_map = {"region": list(region_names), "year": list(range(2002, 2018))}
        self.metadata_fields = ["region", "year", "y"]
        self.split_array = np.asarray([by_display[canonical[r[0]]] for r in rows])
        self.y_array = np.asarray([r[2] for r in rows])
        years = [r[3] if len(r) > 3 else FAKE_FMOW_YEARS[r[0]] for r in rows]
        self.metadata_array = np.asarray(
            [[list(region_names).index(r[1]), year - 2002, r[2]] for r, year in zip(rows, years)], dtype=np.int64
        ).reshape(-1, 3)

    @classmethod
    def from_metadata(cls, rows=None, **kwargs) -> "FakeWildsFMoW":
        """The dataset WILDS makes of ``(metadata split, country, region, timestamp)`` rows (default
        :data:`FMOW_ROWS`), labels cycling through the 62 classes as in :func:`build_fmow`; dropped rows are
        left out, so row ``i`` of the result is ``kept[i]`` of the input (``.kept``)."""
        rows = FMOW_ROWS if rows is None else rows
        out, kept = [], []
        for i, (msplit, _cc, region, ts) in enumerate(rows):
            key = wilds_fmow_split(msplit, int(ts[:4]))
            if key is not None:
                out.append((key, region, (7 * i) % 62, int(ts[:4])))
                kept.append(i)
        fake = cls(out, **kwargs)
        fake.kept = kept
        return fake

    def get_input(self, idx: int) -> Image.Image:
        return Image.fromarray(label_image(int(self.y_array[idx]) % 10, 8))


#: (WILDS metadata split, ISO-3 country, region, timestamp) rows of the FMoW miniature; regions follow
#: LP-FT's order of first appearance (Asia, Europe, Africa, Americas, Oceania, Other)
FMOW_ROWS = [
    ("train", "CHN", "Asia", "2010-03-01T00:00:00Z"),
    ("train", "FRA", "Europe", "2011-06-01T00:00:00Z"),
    ("train", "KEN", "Africa", "2012-01-01T00:00:00Z"),
    ("train", "USA", "Americas", "2009-05-01T00:00:00Z"),
    ("train", "AUS", "Oceania", "2011-02-01T00:00:00Z"),
    ("train", "ATA", "Other", "2010-02-01T00:00:00Z"),
    ("train", "BRA", "Americas", "2012-07-01T00:00:00Z"),
    ("val", "USA", "Americas", "2012-03-01T00:00:00Z"),      # ID val (before 2013)
    ("val", "USA", "Americas", "2014-03-01T00:00:00Z"),      # OOD val (2013-2015)
    ("val", "NGA", "Africa", "2014-08-01T00:00:00Z"),
    ("val", "DEU", "Europe", "2015-01-01T00:00:00Z"),
    ("test", "CAN", "Americas", "2011-01-01T00:00:00Z"),     # ID test
    ("test", "KEN", "Africa", "2016-05-01T00:00:00Z"),       # OOD test
    ("seq", "USA", "Americas", "2016-09-01T00:00:00Z"),      # sequestered: dropped by WILDS
    ("val", "KEN", "Africa", "2011-09-01T00:00:00Z"),        # ID val, Africa
    ("val", "FRA", "Europe", "2010-04-01T00:00:00Z"),        # ID val, Europe
    ("train", "MEX", "Americas", "2008-08-01T00:00:00Z"),
]


def build_fmow(root) -> Path:
    """``fmow_v1.1/`` as the WILDS archive extracts it: metadata CSVs, release marker, 224x224 PNGs.

    Readable by the real ``wilds`` package (not installed in CI); rows are :data:`FMOW_ROWS`, labels cycle
    through the 62 categories.
    """
    import csv

    base = Path(root) / "fmow_v1.1"
    (base / "images").mkdir(parents=True, exist_ok=True)
    cats = load_facts("fmow")["classnames"]
    regions = {}
    with open(base / "rgb_metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "img_filename", "img_path", "spatial_reference", "epsg", "category", "visible",
                    "img_width", "img_height", "country_code", "cloud_cover", "timestamp", "lat", "lon"])
        for i, (split, cc, region, ts) in enumerate(FMOW_ROWS):
            cat = cats[(7 * i) % len(cats)]
            w.writerow([split, f"{cat}_{i}_0_rgb.jpg", f"{split}/{cat}/{cat}_{i}/{cat}_{i}_0_rgb.jpg", "WGS84", 4326,
                        cat, True, 224, 224, cc, 0, ts, 0.0, 0.0])
            if region != "Other":
                regions[cc] = region
    with open(base / "country_code_mapping.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "alpha-2", "alpha-3", "region"])
        for cc, region in regions.items():
            w.writerow([cc.title(), cc[:2], cc, region])
    (base / "RELEASE_v1.1.txt").write_text("v1.1 miniature\n")
    png = tiny_image_bytes("PNG", size=224)
    for i in range(len(FMOW_ROWS)):
        (base / "images" / f"rgb_img_{i}.png").write_bytes(png)
    return Path(root)
