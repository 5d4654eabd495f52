"""DomainNet, 40-class 4-domain subset (the SENTRY split files), as LP-FT (Kumar et al. 2022) uses it.

Train on sketch; ID = sketch; OOD = real, painting and clipart test images, each reported, plus their
average (``split_averages["ood_avg"]``). Splits:

* ``id_train`` / ``id_val``: ``sketch_train_mini.txt`` with 10% held out for validation (seed
  :data:`~lpft.vision.data.folders.HOLDOUT_SEED`); with ``selection="paper"`` ``id_train`` is all of it and
  ``id_val`` is ``id_test``: the official ``sketch_val`` is the sketch test file (transfer_learning
  ``configs/adaptation/datasets_domainnet.yaml:34-41``);
* ``id_test``: ``sketch_test_mini.txt``;
* ``real``, ``painting``, ``clipart``: ``<domain>_test_mini.txt``.

Layout: ``domainnet/SENTRY_splits/<domain>_<train|test>_mini.txt`` (lines ``<relative path> <label>``) and
``domainnet/<domain>/<class>/<domain>_NNN_NNNNNN.jpg`` (the official zips extract to ``<domain>/``). The
same directly under ``--data-root`` is accepted too.
"""

from __future__ import annotations

from pathlib import Path

from lpft.vision.data.base import Benchmark, register_benchmark
from lpft.vision.data.folders import ImageDataset, incomplete, load_facts, select_train, train_val_sizes

DOMAINNET_VAL_FRACTION = 0.1
ID_DOMAIN = "sketch"
OOD_DOMAINS = ("real", "painting", "clipart")

LAYOUT = """\
  domainnet/SENTRY_splits/{clipart,painting,real,sketch}_{train,test}_mini.txt
  domainnet/{clipart,painting,real,sketch}/<class>/<domain>_NNN_NNNNNN.jpg
  (or the same directly under --data-root)"""


def split_file_name(domain: str, part: str) -> str:
    return f"{domain}_{part}_mini.txt"


def find_base(root) -> Path | None:
    """``root/domainnet`` or ``root`` -- whichever holds ``SENTRY_splits/``."""
    for cand in (Path(root) / "domainnet", Path(root)):
        if (cand / "SENTRY_splits").is_dir():
            return cand
    return None


def official_counts(selection: str = "heldout") -> dict[str, int]:
    """Official image count per split under ``selection``."""
    files = load_facts("domainnet")["split_files"]
    n_test = files[split_file_name(ID_DOMAIN, "test")]["lines"]
    tr, va = train_val_sizes(files[split_file_name(ID_DOMAIN, "train")]["lines"], n_test, selection, DOMAINNET_VAL_FRACTION)
    out = {"id_train": tr, "id_val": va, "id_test": n_test}
    for d in OOD_DOMAINS:
        out[d] = files[split_file_name(d, "test")]["lines"]
    return out


class DomainNetBenchmark(Benchmark):
    """DomainNet (SENTRY 40-class version); see the module docstring."""

    def split_file(self, split: str) -> tuple[str, str]:
        if split in ("id_train", "id_val"):
            return ID_DOMAIN, "train"
        if split == "id_test":
            return ID_DOMAIN, "test"
        return split, "test"

    def read_split_file(self, path: Path) -> list[tuple[str, int]]:
        """Parse a split file into ``(relative path, label)`` pairs, validating labels against folders."""
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise ValueError(f"{path}:{lineno}: expected '<relative path> <label>', got {line!r}")
                rel, label = parts[0], int(parts[1])
                if not 0 <= label < len(self.classnames):
                    raise ValueError(f"{path}:{lineno}: label {label} outside 0..{len(self.classnames) - 1}")
                folder = Path(rel).parent.name
                if folder != self.classnames[label]:
                    raise ValueError(
                        f"{path}:{lineno}: label {label} is {self.classnames[label]!r} but the image is in folder {folder!r}"
                    )
                out.append((rel, label))
        return out

    def read_split(self, root, split, transform, *, selection, options):
        base = find_base(root)
        if base is None:
            raise self.missing(
                f"split files in {Path(root) / 'domainnet' / 'SENTRY_splits'} (or {Path(root) / 'SENTRY_splits'})",
                f"not found; 0 of {official_counts(selection)[split]:,} images",
            )
        domain, part = self.split_file(split)
        fname = split_file_name(domain, part)
        fpath = base / "SENTRY_splits" / fname
        if not fpath.is_file():
            raise incomplete(self, f"split file {fpath}", "not found")
        rows = self.read_split_file(fpath)
        missing = [rel for rel, _ in rows if not (base / rel).is_file()]
        if missing:
            raise incomplete(
                self,
                f"the {len(rows):,} images listed in {fname} under {base}",
                f"{len(missing):,} missing, found {len(rows) - len(missing):,} of {len(rows):,}; "
                f"e.g. {base / missing[0]} (is {base / domain}/ extracted from {domain}.zip?)",
                found=len(rows) - len(missing),
                expected=len(rows),
            )
        samples = [(str(base / rel), y) for rel, y in rows]
        info: dict = {}
        if split in ("id_train", "id_val"):
            samples, info = select_train(samples, split, selection, DOMAINNET_VAL_FRACTION)
        info.update(source=str(fpath), domain=domain, official_size=official_counts(selection)[split])
        return ImageDataset(samples, self.classnames, transform, split_info=info)


DOMAINNET = register_benchmark(
    DomainNetBenchmark(
        name="domainnet",
        classnames=list(load_facts("domainnet")["classnames"]),
        splits={"id_train": "id", "id_val": "id", "id_test": "id", "real": "ood", "painting": "ood", "clipart": "ood"},
        layout=LAYOUT,
        how_to_get="python -m lpft.vision.data download domainnet --root DIR",
        split_averages={"ood_avg": list(OOD_DOMAINS)},
        paper_selection="DomainNet sketch test, sketch_test_mini.txt (= id_test; official sketch_val)",
    )
)
