"""ImageNet-1k and its distribution shifts: ImageNetV2, ImageNet-R, ImageNet-A, ImageNet-Sketch, ObjectNet.

Splits (Wortsman et al. 2022, WiSE-FT; Kumar et al. 2022, LP-FT):

* ``id_train`` / ``id_val``: ImageNet train, with 2% held out for validation (seed
  :data:`~lpft.vision.data.folders.HOLDOUT_SEED`, like the "ImageNet2p" held-out set of model soups); with
  ``selection="paper"`` ``id_train`` is all of ImageNet train and ``id_val`` is ``id_test`` (ImageNet val),
  which LP-FT selects on (transfer_learning ``configs/adaptation/datasets_imagenet.yaml:60-61``);
* ``id_test``: ImageNet val (50,000);
* ``imagenet_v2`` (matched frequency), ``imagenet_sketch``: labels are ImageNet indices;
* ``imagenet_r``, ``imagenet_a``: labels are ImageNet indices (1000-class space) and ``class_mask`` holds
  the 200 valid indices: only those logits compete;
* ``objectnet``: the 113 ObjectNet classes overlapping ImageNet (labels 0..112, sorted folder names),
  ``project_logits`` max-pools each class's ImageNet logits, and a 2-pixel border is cropped.

Each dataset sits in the folder its archive extracts to, directly under ``--data-root`` or under
``--data-root/imagenet/`` (LP-FT's convention).
"""

from __future__ import annotations


from lpft.vision.data.base import Benchmark, register_benchmark
from lpft.vision.data.folders import (
    GroupMaxProjection,
    ImageDataset,
    list_images,
    load_facts,
    scan_class_folders,
    select_train,
    train_val_sizes,
)
from lpft.vision.data.imagenet_meta import (  # noqa: F401  (re-exported)
    LOCATIONS,
    imagenet_classnames,
    imagenet_templates,
    imagenet_wnids,
    locate,
    objectnet_classes,
)

#: fraction of ImageNet train held out as ``id_val``
IMAGENET_VAL_FRACTION = 0.02

def official_counts(selection: str = "heldout") -> dict[str, int | None]:
    """Official image counts per ImageNet split under ``selection`` (``None`` where not known)."""
    v = load_facts("imagenet_variants")
    n_train = v["imagenet_1k"]["counts"]["train"]
    tr, va = train_val_sizes(n_train, v["imagenet_1k"]["counts"]["val"], selection, IMAGENET_VAL_FRACTION)
    return {
        "id_train": tr,
        "id_val": va,
        "id_test": v["imagenet_1k"]["counts"]["val"],
        "imagenet_v2": v["imagenet_v2_matched_frequency"]["count"],
        "imagenet_r": v["imagenet_r"]["count"],
        "imagenet_a": v["imagenet_a"]["count"],
        "imagenet_sketch": v["imagenet_sketch"]["count"],
        "objectnet": None,  # size of the 113-class subset: not published
    }


LAYOUT = """\
  imagenet/train/<wnid>/*.JPEG                      (1000 wnid folders; ILSVRC2012_img_train.tar)
  imagenet/val/<wnid>/*.JPEG                        (1000 wnid folders, 50 each; or imagenet/val_in_folder/)
  imagenetv2-matched-frequency-format-val/<0..999>/ (folder name = ImageNet class index)
  imagenet-r/<wnid>/                                (200 folders)
  imagenet-a/<wnid>/                                (200 folders)
  sketch/<wnid>/                                    (1000 folders; ImageNet-Sketch)
  objectnet-1.0/images/<folder>/                    (313 folders; the 113 mapped to ImageNet are used)
  (each of the last five may also sit under imagenet/)"""


class ImageNetBenchmark(Benchmark):
    """ImageNet-1k (ID) with five OOD test sets; see the module docstring."""

    def read_split(self, root, split, transform, *, selection, options):
        wnids = imagenet_wnids()
        counts = official_counts(selection)
        if split in ("id_train", "id_val"):
            base = locate(self, root, "train", "ImageNet train (imagenet/train/<wnid>/)", counts[split])
            samples = scan_class_folders(
                self, base, wnids, range(1000), what="ImageNet train", official=load_facts("imagenet_variants")["imagenet_1k"]["counts"]["train"]
            )
            samples, info = select_train(samples, split, selection, IMAGENET_VAL_FRACTION)
            info.update(source=str(base), official_size=counts[split])
            return ImageDataset(samples, self.classnames, transform, split_info=info)
        if split == "id_test":
            base = locate(self, root, "val", "ImageNet val sorted into wnid folders (imagenet/val/<wnid>/)", counts[split])
            flat = list_images(base)
            if flat and not any((base / w).is_dir() for w in wnids[:5]):
                raise self.missing(
                    f"ImageNet val at {base} sorted into 1000 <wnid>/ folders",
                    f"found {len(flat):,} images directly in {base} (the flat ILSVRC2012_img_val.tar layout); "
                    "run `python -m lpft.vision.data download imagenet --root DIR` with the archives in DIR/imagenet/ "
                    "to sort them",
                )
            samples = scan_class_folders(self, base, wnids, range(1000), what="ImageNet val", official=counts["id_test"])
            return ImageDataset(samples, self.classnames, transform, split_info={"source": str(base), "official_size": counts[split]})
        if split == "imagenet_v2":
            base = locate(self, root, split, "ImageNetV2 matched-frequency (imagenetv2-matched-frequency-format-val/<0..999>/)", counts[split])
            # the folder name is the ImageNet class index (not an ImageFolder position)
            samples = scan_class_folders(
                self, base, [str(i) for i in range(1000)], range(1000), what="ImageNetV2", official=counts[split]
            )
            return ImageDataset(samples, self.classnames, transform, split_info={"source": str(base), "official_size": counts[split]})
        if split == "imagenet_sketch":
            base = locate(self, root, split, "ImageNet-Sketch (sketch/<wnid>/)", counts[split])
            samples = scan_class_folders(self, base, wnids, range(1000), what="ImageNet-Sketch", official=counts[split])
            return ImageDataset(samples, self.classnames, transform, split_info={"source": str(base), "official_size": counts[split]})
        if split in ("imagenet_r", "imagenet_a"):
            facts = load_facts(split)
            label = "ImageNet-R (imagenet-r/<wnid>/)" if split == "imagenet_r" else "ImageNet-A (imagenet-a/<wnid>/)"
            base = locate(self, root, split, label, counts[split])
            samples = scan_class_folders(
                self, base, facts["wnids"], facts["imagenet_indices"], what=label.split(" (")[0], official=counts[split]
            )
            info = {
                "source": str(base),
                "official_size": counts[split],
                "label_space": "ImageNet-1k indices; only class_mask logits compete",
            }
            return ImageDataset(
                samples, self.classnames, transform, class_mask=facts["imagenet_indices"], split_info=info
            )
        if split == "objectnet":
            base = locate(self, root, split, "ObjectNet (objectnet-1.0/images/<folder>/)")
            classes = objectnet_classes()
            samples = scan_class_folders(
                self, base, [c["folder"] for c in classes], range(len(classes)), what="ObjectNet (113 ImageNet-overlapping classes)"
            )
            info = {
                "source": str(base),
                "official_size": None,
                "label_space": "113 ObjectNet classes; logits max-pooled over each class's ImageNet classes",
                "border_crop": 2,
            }
            return ImageDataset(
                samples,
                [c["objectnet_name"].lower() for c in classes],
                transform,
                projection=GroupMaxProjection([c["imagenet_indices"] for c in classes]),
                border_crop=2,
                split_info=info,
            )
        raise AssertionError(split)  # pragma: no cover


IMAGENET = register_benchmark(
    ImageNetBenchmark(
        name="imagenet",
        classnames=imagenet_classnames(),
        splits={
            "id_train": "id",
            "id_val": "id",
            "id_test": "id",
            "imagenet_v2": "ood",
            "imagenet_r": "ood",
            "imagenet_a": "ood",
            "imagenet_sketch": "ood",
            "objectnet": "ood",
        },
        templates=imagenet_templates(),
        layout=LAYOUT,
        paper_selection="ImageNet val (= id_test; LP-FT selects on ImageNet val, datasets_imagenet.yaml:60-61)",
        how_to_get="python -m lpft.vision.data download imagenet --root DIR  (ImageNet and ObjectNet need a licence: "
        "the command prints what to fetch and where; the other sets are downloaded)",
    )
)
