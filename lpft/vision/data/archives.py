"""Safe extraction of downloaded tar and zip archives: nothing is ever written outside the target folder.

Every member is checked twice: all of them before anything is written (so a malicious archive is refused
before it leaves a trace), and each again just before it is written (so a link extracted earlier from the
same archive cannot redirect a later member). A member is refused when its name is absolute (``/x``,
``C:/x``), contains a ``..`` component, or resolves -- following links already on disk -- outside the
target (real path containment, ``Path.is_relative_to``: a sibling ``<target>2/`` is outside ``<target>/``,
unlike with a string-prefix test). A link is refused when its target is absolute or resolves outside;
device files and FIFOs are refused. Tar members are in addition written through tarfile's ``"data"``
extraction filter where Python has it (3.12, and 3.8.17+ / 3.9.17+ / 3.10.12+ / 3.11.4+ backports;
``tarfile.data_filter``), which applies the same rules at write time and drops unsafe permission bits.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from lpft.vision.progress import tqdm

from lpft.vision.io import write_text_atomic

#: tarfile's "data" extraction filter exists (checked by feature, not by version: it was backported)
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder, or is a device file or unsafe link."""


def is_within(root: Path, path: Path) -> bool:
    """Whether ``path`` (resolved, following links on disk) is ``root`` or inside it (``root`` resolved)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def _unsafe(archive: Path, name: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"refusing to extract unsafe archive member {name!r} of {archive.name}: {why}; nothing "
                              "is written outside the target folder")


def _check_name(archive: Path, root: Path, name: str) -> Path:
    """The destination of member ``name`` under ``root``; :class:`UnsafeArchiveError` if it is not safe."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive:
        raise _unsafe(archive, name, "absolute path")
    if ".." in posix.parts:
        raise _unsafe(archive, name, "'..' in its path")
    dest = root / posix
    if not is_within(root, dest):
        raise _unsafe(archive, name, f"resolves to {dest.resolve()}, outside {root}")
    return dest


def _check_link(archive: Path, root: Path, name: str, link_target: str, base: Path) -> None:
    """Refuse a link named ``name`` whose target (relative to ``base``) is absolute or outside ``root``."""
    if PurePosixPath(link_target.replace("\\", "/")).is_absolute() or PureWindowsPath(link_target).drive:
        raise _unsafe(archive, name, f"link to the absolute path {link_target!r}")
    if not is_within(root, base / link_target):
        raise _unsafe(archive, name, f"link to {link_target!r}, which resolves outside {root}")


def _check_tar_member(archive: Path, root: Path, m: tarfile.TarInfo) -> None:
    dest = _check_name(archive, root, m.name)
    if m.isdev():  # character / block devices and FIFOs
        raise _unsafe(archive, m.name, "device file or FIFO")
    if m.issym():
        _check_link(archive, root, m.name, m.linkname, dest.parent)
    elif m.islnk():  # a hard link's target is an archive path, relative to the extraction root
        _check_link(archive, root, m.name, m.linkname, root)


def _zip_symlink_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """The target of a Unix symlink entry (mode in the high 16 bits of ``external_attr``), else ``None``."""
    if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
        return zf.read(info).decode("utf-8", "replace")
    return None


def _check_zip_member(archive: Path, root: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    dest = _check_name(archive, root, info.filename)
    target = _zip_symlink_target(zf, info)
    if target is not None:
        _check_link(archive, root, info.filename, target, dest.parent)
        # zipfile would write the link as a plain file holding the target path: refuse it instead
        raise _unsafe(archive, info.filename, f"symbolic link to {target!r} (links in zip archives are not supported)")


def _extract_tar(archive: Path, root: Path, progress: bool) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_tar_member(archive, root, m)
        for m in tqdm(members, desc=f"extract {archive.name}", disable=not progress):
            _check_tar_member(archive, root, m)  # again: earlier members may have created links
            if HAS_DATA_FILTER:
                try:
                    tf.extract(m, root, filter="data")
                except tarfile.FilterError as e:
                    raise _unsafe(archive, m.name, str(e)) from e
            else:
                tf.extract(m, root)


def _extract_zip(archive: Path, root: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_zip_member(archive, root, zf, info)
        for info in tqdm(infos, desc=f"extract {archive.name}", disable=not progress):
            _check_zip_member(archive, root, zf, info)
            zf.extract(info, root)


def extract(archive: str | os.PathLike, target: str | os.PathLike, *, progress: bool = True) -> Path:
    """Extract a tar(.gz) or zip ``archive`` into ``target`` (once: a marker file records completion).

    Args:
        archive: the archive file.
        target: the folder to extract into (created if needed).
        progress: show a progress bar.

    Returns:
        ``target``.

    Raises:
        UnsafeArchiveError: a member is unsafe (see the module docstring); the message names it and why.
        ValueError: ``archive`` is neither a tar nor a zip archive.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    marker = target / f".extracted-{archive.name}"
    if marker.exists():
        return target
    root = target.resolve()
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, root, progress)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, root, progress)
    else:
        raise ValueError(f"{archive} is neither a tar nor a zip archive")
    write_text_atomic(marker, "ok\n")
    return target
