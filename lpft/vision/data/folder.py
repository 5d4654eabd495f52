"""``folder``: any image-classification dataset laid out as one folder per split and per class.

``python -m lpft.vision.run --benchmark folder --data-root DIR`` runs every method on::

    DIR/id_train/<class>/*.jpg        training images; the sorted class folder names are the classes
    DIR/id_val/<class>/*.jpg          optional selection set (else a seeded part of id_train is held out)
    DIR/id_test/<class>/*.jpg         ID test set
    DIR/<ood_name>/<class>/*.jpg      any number of OOD test sets, each reported as its own split

The registered benchmark knows only the three ID splits; :meth:`FolderBenchmark.for_root` reads the root and
returns a bound benchmark with the OOD splits (sorted folder names, shift ``"ood"``) and the classes. A class
folder name is the class id (recorded in ``split_info``); its display name, used in zero-shot prompts, reads
``_`` as a space (``red_square`` -> ``"a photo of a red square."``).

Splits:

* ``id_train`` / ``id_val``: with ``DIR/id_val`` present, ``id_train`` is all of ``DIR/id_train`` and
  ``id_val`` is ``DIR/id_val`` under either selection (it is the dataset's own selection set). Without it,
  :data:`FOLDER_VAL_FRACTION` of ``DIR/id_train`` is held out as ``id_val`` (seed
  :data:`~lpft.vision.data.folders.HOLDOUT_SEED`, as for CIFAR-10, BREEDS, DomainNet and FMoW), and
  ``selection="paper"`` falls back to ``"heldout"`` (recorded in ``split_info``).
* ``id_val`` / ``id_test`` may lack some classes (recorded as ``missing_classes``); their logits are not masked.
* an OOD split may hold a subset of the classes: only those logits compete (``class_mask``, as ImageNet-R).

Images are the files with an image extension directly inside a class folder; hidden entries (``.name``)
are ignored. Bad layouts raise errors naming the path: a missing ``id_train`` / ``id_test``, a class folder
that is not a training class, a class folder without images, a split without any image, image files lying
directly in a split folder. Undecodable images follow the run's ``--on-corrupt`` policy.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lpft.vision.data.base import ID_SPLITS, Benchmark, register_benchmark
from lpft.vision.data.folders import ImageDataset, incomplete, is_image_file, list_images, select_train

#: fraction of ``DIR/id_train`` held out as ``id_val`` when ``DIR/id_val`` is absent (the package's usual 10%)
FOLDER_VAL_FRACTION = 0.1
#: generic zero-shot prompts (a subset of CLIP's 80 ImageNet templates, Radford et al. 2021, that suits any
#: object category)
FOLDER_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
)

LAYOUT = """\
  id_train/<class>/*.jpg    (required; the sorted class folder names are the classes, '_' read as a space in prompts)
  id_val/<class>/*.jpg      (optional; else 10% of id_train is held out, seed 0)
  id_test/<class>/*.jpg     (required)
  <ood_name>/<class>/*.jpg  (any number of OOD splits; each may hold a subset of the classes)"""


def display_name(class_id: str) -> str:
    """The name a class folder stands for in prompts: ``_`` read as a space (``"red_square"`` -> ``"red square"``)."""
    return " ".join(class_id.replace("_", " ").split())


def _subdirs(path: Path) -> tuple[list[str], list[str]]:
    """(sorted visible sub-folder names, sorted image files lying directly in ``path``)."""
    dirs, images = [], []
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                dirs.append(e.name)
            elif is_image_file(e.name) and e.is_file():
                images.append(e.name)
    return sorted(dirs), sorted(images)


@dataclass
class FolderBenchmark(Benchmark):
    """A user dataset in split/class folders; see the module docstring.

    The registered instance is unbound (``root`` is ``None``: only the ID splits, no classes); :meth:`for_root`
    returns the benchmark bound to a data root, and :meth:`load` binds itself first when unbound.
    """

    #: the data root this instance is bound to (``None``: the registered, unbound declaration)
    root: str | None = None
    #: class folder names (the class ids), in label order; ``classnames`` holds their display names
    class_ids: list[str] = field(default_factory=list)
    #: whether ``root/id_val`` exists (else ``id_val`` is held out from ``id_train``)
    has_id_val: bool = False

    def for_root(self, root) -> "FolderBenchmark":
        """The benchmark with the splits and classes found under ``root``.

        Only folders are listed here (no image is opened or counted); each split's images are checked when
        it is loaded.

        Raises:
            DatasetNotFoundError: no root, the root is not a directory, ``root/id_train`` is missing or holds
                no class folder.
            ValueError: two class folders with the same display name (e.g. ``a_b`` and ``a b``).
        """
        if root is None:
            raise self.missing("a --data-root", "none was given")
        path = Path(root)
        if self.root is not None and Path(self.root) == path:
            return self
        if not path.is_dir():
            raise self.missing(f"data root {path} to be a directory", "it does not exist")
        train = path / "id_train"
        if not train.is_dir():
            raise self.missing(f"{train}", "the training split, one folder per class, is missing")
        class_ids, loose = _subdirs(train)
        if not class_ids:
            detail = f"it holds {len(loose)} image file(s) but no class folder" if loose else "it holds no class folder"
            raise self.missing(f"one folder per class in {train}", detail)
        names = [display_name(c) for c in class_ids]
        dup = {n for n, k in Counter(names).items() if k > 1}
        if dup or not all(names):
            clash = [c for c, n in zip(class_ids, names) if n in dup or not n]
            raise ValueError(f"folder: class folders {clash} in {train} have the same or an empty display name "
                             f"('_' is read as a space); rename them")
        top, _ = _subdirs(path)
        ood = [d for d in top if d not in ID_SPLITS]
        has_val = (path / "id_val").is_dir()
        return dataclasses.replace(
            self,
            root=str(path),
            classnames=names,
            class_ids=class_ids,
            has_id_val=has_val,
            splits={**{s: "id" for s in ID_SPLITS}, **{d: "ood" for d in ood}},
            paper_selection=f"{path / 'id_val'} (the dataset's own validation folder)" if has_val else None,
        )

    def load(self, root, split, transform=None, *, selection="heldout", options=None):
        """As :meth:`Benchmark.load`, binding to ``root`` first (:meth:`for_root`)."""
        bound = self.for_root(root)
        if bound is not self:
            return bound.load(root, split, transform, selection=selection, options=options)
        return super().load(root, split, transform, selection=selection, options=options)

    def split_source(self, split, selection, options):
        """Every split reads its own folder (``id_val`` never reads ``id_test``)."""
        return split

    def read_split(self, root, split, transform, *, selection, options):
        base = Path(self.root)
        if split in ("id_train", "id_val") and not self.has_id_val:
            samples, info = self._scan("id_train")
            samples, hold = select_train(samples, split, selection, FOLDER_VAL_FRACTION)
            info.update(hold, source=str(base / "id_train"), val_source="held out from id_train")
            info.update(self._coverage(samples))
        else:
            samples, info = self._scan(split)
            if split in ("id_train", "id_val"):
                info["val_source"] = "the dataset's own id_val folder"
        mask = None
        if self.splits[split] == "ood" and info["missing_classes"]:
            # a subset of the classes: only their logits compete (as ImageNet-R's 200 of 1000)
            absent = set(info["missing_classes"])
            mask = [i for i, c in enumerate(self.class_ids) if c not in absent]
            info["label_space"] = "training classes; only the classes present (class_mask) compete"
        if split == "id_train":
            info["class_folders"] = list(self.class_ids)
        return ImageDataset(samples, self.classnames, transform, class_mask=mask, split_info=info)

    def _coverage(self, samples) -> dict:
        present = {label for _, label in samples}
        return {"num_classes": len(present),
                "missing_classes": [c for i, c in enumerate(self.class_ids) if i not in present]}

    def _scan(self, split: str) -> tuple[list[tuple[str, int]], dict]:
        """``(path, label)`` of every image of ``root/<split>/<class>/``, with its ``split_info``."""
        base = Path(self.root) / split
        if not base.is_dir():
            raise self.missing(f"{base}", f"the {split} split, one folder per class, is missing")
        folders, loose = _subdirs(base)
        if loose:
            raise ValueError(f"folder: {base} holds {len(loose)} image file(s) directly (e.g. {base / loose[0]}); "
                             f"expected every image inside a class folder {base}/<class>/")
        if not folders:
            raise incomplete(self, f"one folder per class in {base}", "it holds no class folder", found=0)
        label = {c: i for i, c in enumerate(self.class_ids)}
        unknown = [f for f in folders if f not in label]
        if unknown:
            shown = ", ".join(str(base / f) for f in unknown[:5])
            raise ValueError(
                f"folder: {len(unknown)} class folder(s) of {split} are not training classes: {shown}; every class "
                f"of a split must be a folder of {Path(self.root) / 'id_train'} ({', '.join(self.class_ids[:10])}"
                f"{', ...' if len(self.class_ids) > 10 else ''})"
            )
        samples, empty = [], []
        for f in folders:
            names = list_images(base / f)
            if not names:
                empty.append(f)
            samples.extend((str(base / f / n), label[f]) for n in names)
        if not samples:
            raise incomplete(self, f"image files in {base}", f"none of its {len(folders)} class folders holds an "
                             f"image file (images sit directly in {base}/<class>/)", found=0)
        if empty:
            shown = ", ".join(str(base / f) for f in empty[:5])
            raise incomplete(self, f"images in every class folder of {base}",
                             f"{len(empty)} class folder(s) hold no image file: {shown}", found=len(samples))
        info = {"source": str(base)}
        info.update(self._coverage(samples))
        return samples, info


FOLDER = register_benchmark(
    FolderBenchmark(
        name="folder",
        classnames=[],
        splits={s: "id" for s in ID_SPLITS},
        templates=list(FOLDER_TEMPLATES),
        layout=LAYOUT,
        how_to_get="arrange your own images in these folders and pass their parent as --data-root",
        root_defined=True,
    )
)
