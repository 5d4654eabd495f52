"""BREEDS Living-17 and Entity-30 (Santurkar et al. 2021) as LP-FT (Kumar et al. 2022) uses them.

Each superclass is a label; its *source* ImageNet subclasses are in distribution and its *target*
subclasses are the OOD shift (subpopulation shift). The subclass lists are the ones the BREEDS library
produces with ``split="rand"`` and its default seed (``facts/breeds.json``). Splits:

* ``id_train`` / ``id_val``: source subclasses' ImageNet train images, 10% held out for validation
  (seed :data:`~lpft.vision.data.folders.HOLDOUT_SEED`); with ``selection="paper"`` ``id_train`` is every
  source-subclass train image and ``id_val`` is ``id_test``, the official ``source_val`` selection set
  (transfer_learning ``configs/adaptation/datasets_living17.yaml:37-44``);
* ``id_test``: source subclasses' ImageNet val images (50 per subclass);
* ``ood_test``: target subclasses' ImageNet val images.

Only the subclass folders a benchmark uses must be present under ``imagenet/train`` and ``imagenet/val``.
"""

from __future__ import annotations

from lpft.vision.data.base import Benchmark, register_benchmark
from lpft.vision.data.folders import ImageDataset, load_facts, scan_class_folders, select_train, train_val_sizes
from lpft.vision.data.imagenet_meta import imagenet_templates, locate

#: fraction of the source training images held out as ``id_val``
BREEDS_VAL_FRACTION = 0.1

LAYOUT = """\
  imagenet/train/<wnid>/*.JPEG   (ImageNet train; the benchmark's source subclass folders)
  imagenet/val/<wnid>/*.JPEG     (ImageNet val sorted into wnid folders; source and target subclasses)"""


def breeds_classes(name: str) -> list[dict]:
    """The superclasses of ``living17`` or ``entity30`` (label, name, source/target wnids and indices)."""
    return list(load_facts("breeds")[name]["classes"])


def official_counts(name: str, selection: str = "heldout") -> dict[str, int]:
    """Official image count per split of ``living17`` / ``entity30`` under ``selection``."""
    c = load_facts("breeds")["expected_image_counts"][name]
    tr, va = train_val_sizes(c["source_train"], c["source_val"], selection, BREEDS_VAL_FRACTION)
    return {"id_train": tr, "id_val": va, "id_test": c["source_val"], "ood_test": c["target_val"]}


class BreedsBenchmark(Benchmark):
    """A BREEDS benchmark over the ImageNet train/val folders; see the module docstring."""

    def _folders(self, domain: str) -> tuple[list[str], list[int]]:
        folders, labels = [], []
        for c in breeds_classes(self.name):
            for w in c[f"{domain}_wnids"]:
                folders.append(w)
                labels.append(int(c["label"]))
        return folders, labels

    def read_split(self, root, split, transform, *, selection, options):
        counts = official_counts(self.name, selection)
        domain = "target" if split == "ood_test" else "source"
        folders, labels = self._folders(domain)
        if split in ("id_train", "id_val"):
            base = locate(self, root, "train", "ImageNet train (imagenet/train/<wnid>/)", counts[split])
            samples = scan_class_folders(
                self, base, folders, labels, what=f"{self.name} source subclasses in ImageNet train",
                official=load_facts("breeds")["expected_image_counts"][self.name]["source_train"],
            )
            samples, info = select_train(samples, split, selection, BREEDS_VAL_FRACTION)
        else:
            base = locate(self, root, "val", "ImageNet val sorted into wnid folders (imagenet/val/<wnid>/)", counts[split])
            samples = scan_class_folders(
                self, base, folders, labels, what=f"{self.name} {domain} subclasses in ImageNet val", official=counts[split]
            )
            info = {}
        info.update(source=str(base), subclasses=domain, official_size=counts[split])
        return ImageDataset(samples, self.classnames, transform, split_info=info)


for _name in ("living17", "entity30"):
    register_benchmark(
        BreedsBenchmark(
            name=_name,
            classnames=[c["superclass_name"] for c in breeds_classes(_name)],
            splits={"id_train": "id", "id_val": "id", "id_test": "id", "ood_test": "ood"},
            templates=imagenet_templates(),
            layout=LAYOUT,
            paper_selection=(
                "BREEDS source val: ImageNet val images of the source subclasses (= id_test; official "
                f"source_val set of configs/adaptation/datasets_{_name}.yaml)"
            ),
            how_to_get=f"python -m lpft.vision.data download {_name} --root DIR  (prints how to get ImageNet, which needs a licence)",
        )
    )
