"""Getting the data: resumable, checksum-verified downloads extracted into the layout the loaders expect.

``python -m lpft.vision.data download NAME --root DIR`` where NAME is a benchmark (``cifar10`` fetches
CIFAR-10, STL-10 and CIFAR-10.1; ``imagenet`` fetches the four public shift sets and explains ImageNet and
ObjectNet, which need a licence) or one dataset of :data:`DATASETS`.

Downloads go to ``DIR/.downloads/<file>.part`` and resume with an HTTP ``Range`` request after an
interruption; a file whose checksum is known is verified before it is used (a mismatch deletes it and
stops). Archives are extracted into ``DIR`` (or the dataset's sub-folder) by
:func:`lpft.vision.data.archives.extract`, which refuses any member that would land outside it; a marker
file records a finished extraction so that re-running the command is cheap.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lpft.vision.progress import tqdm

from lpft.vision.data.archives import UnsafeArchiveError, extract  # noqa: F401  (re-exported)
from lpft.vision.data.folders import load_facts

CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published checksum."""


@dataclass
class RemoteFile:
    """One file to fetch: where from, its name, its checksum(s), and where it goes."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None
    #: extract into this folder (relative to the root); ``None`` = keep the file at ``dest``
    extract_to: str | None = None
    #: where a non-archive file is placed (relative to the root)
    dest: str | None = None


@dataclass
class DatasetSpec:
    """A downloadable dataset (``files``) or one that needs manual steps (``instructions``)."""

    name: str
    description: str
    #: relative paths that exist once the dataset is in place
    provides: list[str]
    files: list[RemoteFile] = field(default_factory=list)
    instructions: str = ""


def file_digest(path: str | os.PathLike, algo: str) -> str:
    """Hex digest of a file (``algo``: md5, sha256 or git_blob_sha1, the id git gives the file's content)."""
    path = Path(path)
    if algo == "git_blob_sha1":
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, rf: RemoteFile) -> bool | None:
    """``True``/``False`` when a checksum is known and matches/doesn't, ``None`` when none is known."""
    for algo in ("sha256", "md5", "git_blob_sha1"):
        want = getattr(rf, algo)
        if want:
            return file_digest(path, algo) == want.lower()
    return None


def _open_range(url: str, offset: int, timeout: float):
    """Open ``url`` from byte ``offset``; returns (stream, total size or None, resumed?)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        total = os.path.getsize(path)
        fh = open(path, "rb")
        fh.seek(min(offset, total))
        return fh, total, True
    req = urllib.request.Request(url, headers={"User-Agent": "lpft-data/0.1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the partial file is complete
            cr = e.headers.get("Content-Range", "")
            total = int(cr.rsplit("/", 1)[1]) if "/" in cr and cr.rsplit("/", 1)[1].isdigit() else offset
            return None, total, True
        raise
    status = getattr(resp, "status", 200)
    length = resp.headers.get("Content-Length")
    if status == 206:
        cr = resp.headers.get("Content-Range", "")
        total = int(cr.rsplit("/", 1)[1]) if "/" in cr and cr.rsplit("/", 1)[1].isdigit() else None
        return resp, total, True
    return resp, int(length) if length and length.isdigit() else None, False


def fetch(
    rf: RemoteFile,
    dest: str | os.PathLike,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``rf.url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run.

    The server's answer to the ``Range`` request decides: 206 appends, 200 starts over, 416 means the part
    is complete. After the transfer the checksum (if known) is verified; a mismatch deletes the file and
    raises :class:`ChecksumError`. An existing ``dest`` that verifies (or has no checksum) is kept.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        ok = verify(dest, rf)
        if ok is not False:
            return dest
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            stream, total, resumed = _open_range(rf.url, offset, timeout)
            if stream is not None:
                mode = "ab" if resumed and offset else "wb"
                start = offset if mode == "ab" else 0
                with stream, open(part, mode) as out, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, desc=rf.filename, disable=not progress
                ) as bar:
                    for block in iter(lambda: stream.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
            if total is not None and part.stat().st_size < total:
                raise OSError(f"connection closed at {part.stat().st_size} of {total} bytes")
            break
        except (OSError, urllib.error.URLError) as e:
            attempt += 1
            if attempt > retries:
                raise OSError(
                    f"download of {rf.url} failed after {retries} retries: {e}; re-run the command to resume "
                    f"from {part}"
                ) from e
            time.sleep(min(2 ** attempt, 30) if not rf.url.startswith("file:") else 0)
    ok = verify(part, rf)
    if ok is False:
        part.unlink()
        want = rf.sha256 or rf.md5 or rf.git_blob_sha1
        raise ChecksumError(f"{rf.filename} from {rf.url} does not match its checksum {want}; the file was deleted")
    os.replace(part, dest)
    return dest


def _imagenet_instructions() -> str:
    a = load_facts("imagenet_variants")["imagenet_1k"]
    arch = a["archives"]
    return (
        "ImageNet-1k needs an account and licence at https://image-net.org/challenges/LSVRC/2012/2012-downloads.php.\n"
        "Fetch these archives (md5) into DIR/imagenet/:\n"
        + "".join(f"  {k}  ({v})\n" for k, v in arch.items())
        + "then re-run `python -m lpft.vision.data download imagenet-1k --root DIR`: it verifies them and extracts\n"
        "train into DIR/imagenet/train/<wnid>/ and sorts val into DIR/imagenet/val/<wnid>/ (via torchvision).\n"
        "Already have ImageNet as class folders? Put (or symlink) them at DIR/imagenet/train and DIR/imagenet/val."
    )


def _objectnet_instructions() -> str:
    url = load_facts("objectnet")["download_url"]
    return (
        f"ObjectNet needs you to accept its licence at https://objectnet.dev/ (download {url}, password-protected zip).\n"
        "Unzip it into DIR so that DIR/objectnet-1.0/images/<folder>/ holds the 313 class folders\n"
        "(the 113 folders that overlap ImageNet are used)."
    )


def _specs() -> dict[str, DatasetSpec]:
    cs = load_facts("cifar_stl")
    v = load_facts("imagenet_variants")
    dn = load_facts("domainnet")
    c101 = cs["cifar10_1"]
    sentry = dn["split_files_source"]
    specs = [
        DatasetSpec("cifar-10", "CIFAR-10 (python version, 170 MB)", ["cifar-10-batches-py/test_batch"], [
            RemoteFile(cs["cifar10"]["download"]["python_version_url"], "cifar-10-python.tar.gz",
                       md5=cs["cifar10"]["download"]["python_version_md5"], extract_to=".")]),
        DatasetSpec("stl-10", "STL-10 binary version (2.6 GB)", ["stl10_binary/test_X.bin"], [
            RemoteFile(cs["stl10"]["download"]["binary_url"], "stl10_binary.tar.gz",
                       md5=cs["stl10"]["download"]["binary_md5"], extract_to=".")]),
        DatasetSpec("cifar-10.1", "CIFAR-10.1 v6", ["CIFAR-10.1/cifar10.1_v6_data.npy"], [
            RemoteFile(c101["urls"]["v6_data"], "cifar10.1_v6_data.npy",
                       git_blob_sha1=c101["git_blob_sha1"]["datasets/cifar10.1_v6_data.npy"],
                       dest="CIFAR-10.1/cifar10.1_v6_data.npy"),
            RemoteFile(c101["urls"]["v6_labels"], "cifar10.1_v6_labels.npy",
                       git_blob_sha1=c101["git_blob_sha1"]["datasets/cifar10.1_v6_labels.npy"],
                       dest="CIFAR-10.1/cifar10.1_v6_labels.npy"),
        ]),
        DatasetSpec("imagenetv2", "ImageNetV2 matched-frequency (1.2 GB)", ["imagenetv2-matched-frequency-format-val"], [
            RemoteFile(v["imagenet_v2_matched_frequency"]["download"]["current"], "imagenetv2-matched-frequency.tar.gz",
                       extract_to=".")]),
        DatasetSpec("imagenet-r", "ImageNet-R (2.1 GB)", ["imagenet-r"], [
            RemoteFile(v["imagenet_r"]["download"], "imagenet-r.tar", extract_to=".")]),
        DatasetSpec("imagenet-a", "ImageNet-A (0.7 GB)", ["imagenet-a"], [
            RemoteFile(v["imagenet_a"]["download"], "imagenet-a.tar", extract_to=".")]),
        DatasetSpec("imagenet-sketch", "ImageNet-Sketch (7.8 GB, Hugging Face copy of the official zip)", ["sketch"], [
            RemoteFile("https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                       "ImageNet-Sketch.zip", extract_to=".")]),
        DatasetSpec("domainnet", "DomainNet clipart/painting/real/sketch + SENTRY 40-class split files",
                    ["domainnet/SENTRY_splits", "domainnet/sketch"],
                    [RemoteFile(dn["image_download"][d], f"{d}.zip", extract_to="domainnet") for d in dn["domains"]]
                    + [RemoteFile(f"https://raw.githubusercontent.com/{sentry['repo']}/{sentry['commit']}/{sentry['dir']}/{f}",
                                  f, sha256=meta["sha256"], dest=f"domainnet/SENTRY_splits/{f}")
                       for f, meta in dn["split_files"].items()]),
        DatasetSpec("fmow", "FMoW-WILDS v1.1 (54 GB) through the wilds package", ["fmow_v1.1/rgb_metadata.csv"],
                    instructions="downloaded by wilds.get_dataset('fmow', root_dir=DIR, download=True)"),
        DatasetSpec("imagenet-1k", "ImageNet-1k train/val (licence required)", ["imagenet/train", "imagenet/val"],
                    instructions=_imagenet_instructions()),
        DatasetSpec("objectnet", "ObjectNet 1.0 (licence required)", ["objectnet-1.0/images"],
                    instructions=_objectnet_instructions()),
    ]
    return {s.name: s for s in specs}


DATASETS: dict[str, DatasetSpec] = _specs()

#: benchmark name -> datasets it needs
BENCHMARK_DATASETS: dict[str, list[str]] = {
    "living17": ["imagenet-1k"],
    "entity30": ["imagenet-1k"],
    "domainnet": ["domainnet"],
    "cifar10": ["cifar-10", "stl-10", "cifar-10.1"],
    "fmow": ["fmow"],
    "imagenet": ["imagenet-1k", "imagenetv2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet"],
}


def resolve(name: str) -> list[str]:
    """Dataset names for a benchmark or dataset ``name`` (``ValueError`` listing valid names)."""
    if name in BENCHMARK_DATASETS:
        return list(BENCHMARK_DATASETS[name])
    if name in DATASETS:
        return [name]
    raise ValueError(
        f"unknown dataset or benchmark {name!r}; expected one of: "
        f"{', '.join(list(BENCHMARK_DATASETS) + list(DATASETS))}"
    )


def _prepare_imagenet(root: Path, out) -> bool:
    """Extract/sort ImageNet from its archives in ``root/imagenet`` with torchvision; False if absent."""
    from torchvision.datasets import ImageNet

    inet = root / "imagenet"
    if all((inet / s).is_dir() for s in ("train", "val")):
        return True
    meta = load_facts("imagenet_variants")["imagenet_1k"]["archives"]
    have = {k: (inet / k).is_file() for k in meta}
    if not have["ILSVRC2012_devkit_t12.tar.gz"]:
        return False
    did = False
    for split, arch in (("val", "ILSVRC2012_img_val.tar"), ("train", "ILSVRC2012_img_train.tar")):
        if have[arch] and not (inet / split).is_dir():
            print(f"preparing ImageNet {split} from {inet / arch} (md5-checked by torchvision) ...", file=out)
            ImageNet(str(inet), split=split)
            did = True
    return did or all((inet / s).is_dir() for s in ("train", "val"))


def download(
    name: str, root: str | os.PathLike, *, progress: bool = True, keep_archives: bool = False, out=None
) -> list[str]:
    """Fetch and extract dataset/benchmark ``name`` under ``root``; print instructions where a licence is needed.

    Archives are cached in ``root/.downloads`` (partial files resume there) and deleted once extracted
    unless ``keep_archives``. Returns the names of datasets that still need manual steps.
    """
    out = out or sys.stdout
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manual = []
    for ds_name in resolve(name):
        spec = DATASETS[ds_name]
        if ds_name == "fmow":
            from lpft.vision.data.fmow import open_wilds

            print(f"[fmow] {spec.description}", file=out)
            open_wilds(root, download=True)
            continue
        if ds_name == "imagenet-1k":
            if _prepare_imagenet(root, out):
                print("[imagenet-1k] in place under imagenet/train and imagenet/val", file=out)
                continue
        if spec.instructions:
            print(f"[{ds_name}] {spec.description}: manual steps needed\n{spec.instructions}\n", file=out)
            manual.append(ds_name)
            continue
        print(f"[{ds_name}] {spec.description}", file=out)
        for rf in spec.files:
            if rf.extract_to is not None:
                if (root / rf.extract_to / f".extracted-{rf.filename}").exists():
                    continue
                archive = fetch(rf, root / ".downloads" / rf.filename, progress=progress)
                extract(archive, root / rf.extract_to, progress=progress)
                if not keep_archives:
                    archive.unlink()
            else:
                fetch(rf, root / (rf.dest or rf.filename), progress=progress)
        print(f"[{ds_name}] done: {', '.join(str(root / p) for p in spec.provides)}", file=out)
    return manual


