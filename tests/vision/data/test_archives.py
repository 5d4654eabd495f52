"""Safe extraction: malicious tar and zip archives built here are refused and write nothing outside the target."""

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lpft.vision.data import archives
from lpft.vision.data import download as dl
from lpft.vision.data.archives import UnsafeArchiveError, extract, is_within


def _tar(path: Path, members) -> Path:
    """Write a tar of ``members``: ``(name, bytes)`` files, ``(name, "sym"|"hard", target)`` links, ``(name, "fifo")``."""
    with tarfile.open(path, "w") as tf:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if len(m) == 2 and isinstance(m[1], bytes):
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
                continue
            if m[1] == "dir":
                info.type = tarfile.DIRTYPE
            elif m[1] == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.type = tarfile.SYMTYPE if m[1] == "sym" else tarfile.LNKTYPE
                info.linkname = m[2]
            tf.addfile(info)
    return path


def _zip(path: Path, members) -> Path:
    """Write a zip of ``(name, bytes)`` files and ``(name, "sym", target)`` Unix symlink entries."""
    with zipfile.ZipFile(path, "w") as zf:
        for m in members:
            if len(m) == 3:
                info = zipfile.ZipInfo(m[0])
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, m[2])
            else:
                zf.writestr(zipfile.ZipInfo(m[0]), m[1])
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture(params=[True, False], ids=["data_filter", "own_checks"])
def data_filter(request, monkeypatch):
    """Run each case with tarfile's "data" filter and with the fallback for Pythons that lack it."""
    if request.param and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    monkeypatch.setattr(archives, "HAS_DATA_FILTER", request.param)
    return request.param


def test_containment_is_by_path_not_by_string_prefix(tmp_path):
    root = tmp_path / "out"
    sibling = tmp_path / "out2" / "x.txt"
    assert str(sibling).startswith(str(root))  # what the old string-prefix check accepted
    assert not is_within(root, sibling)
    assert is_within(root, root / "a" / "b.txt") and is_within(root, root)


def _cases(tmp_path):
    abs_target = str(tmp_path / "abs.txt")
    return {
        "sibling via ..": ([("ok.txt", b"ok"), ("../out2/x.txt", b"x")], "'..' in its path"),
        "parent": ([("../escape.txt", b"x")], "'..' in its path"),
        "absolute": ([(abs_target, b"x")], "absolute path"),
        "windows drive": ([("C:/win.txt", b"x")], "absolute path"),
        "symlink to sibling": ([("link", "sym", "../out2")], "resolves outside"),
        "symlink absolute": ([("link", "sym", str(tmp_path))], "absolute path"),
    }


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("case", ["sibling via ..", "parent", "absolute", "windows drive", "symlink to sibling",
                                  "symlink absolute"])
def test_malicious_members_are_refused(tmp_path, data_filter, kind, case):
    members, why = _cases(tmp_path)[case]
    build = _tar if kind == "tar" else _zip
    arch = build(tmp_path / f"evil.{kind}", members)
    before = _files(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=f"unsafe archive member .* of evil.{kind}: .*{why}"):
        extract(arch, tmp_path / "out", progress=False)
    # refused before anything was written, inside the target or outside it
    assert _files(tmp_path) == before | {"out"}
    assert not (tmp_path / "out" / f".extracted-evil.{kind}").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_existing_link_to_sibling_folder_is_caught_by_containment(tmp_path, data_filter, kind):
    """A member whose name is harmless but which would land in ``<target>2/`` through a link on disk."""
    out, sibling = tmp_path / "out", tmp_path / "out2"
    out.mkdir()
    sibling.mkdir()
    os.symlink(sibling, out / "link")
    arch = (_tar if kind == "tar" else _zip)(tmp_path / f"a.{kind}", [("link/x.txt", b"x")])
    with pytest.raises(UnsafeArchiveError, match=r"'link/x.txt'.*outside"):
        extract(arch, out, progress=False)
    assert _files(sibling) == set()


def test_hard_link_and_fifo_are_refused(tmp_path, data_filter):
    (tmp_path / "secret.txt").write_text("s")
    with pytest.raises(UnsafeArchiveError, match="'h'.*resolves outside"):
        extract(_tar(tmp_path / "h.tar", [("h", "hard", "../secret.txt")]), tmp_path / "o1", progress=False)
    with pytest.raises(UnsafeArchiveError, match="device file or FIFO"):
        extract(_tar(tmp_path / "f.tar", [("pipe", "fifo")]), tmp_path / "o2", progress=False)
    assert _files(tmp_path / "o1") == set() and _files(tmp_path / "o2") == set()


def test_link_chain_is_caught_when_written(tmp_path, data_filter):
    """Each member checks out against the empty target, but ``d/l -> ..`` makes ``d/l/m -> ../x`` escape."""
    arch = _tar(tmp_path / "chain.tar", [("d", "dir"), ("d/l", "sym", ".."), ("d/l/m", "sym", "../x"),
                                         ("d/l/m/pwn.txt", b"x")])
    with pytest.raises(UnsafeArchiveError):
        extract(arch, tmp_path / "out", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "pwn.txt").exists()


def test_zip_symlink_inside_is_refused_not_flattened(tmp_path):
    arch = _zip(tmp_path / "s.zip", [("a.txt", b"a"), ("b", "sym", "a.txt")])
    with pytest.raises(UnsafeArchiveError, match="links in zip archives are not supported"):
        extract(arch, tmp_path / "out", progress=False)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_benign_archive_extracts_with_marker(tmp_path, data_filter, kind):
    members = [("./top/a.txt", b"a"), ("top/sub/b.txt", b"bb")]
    if kind == "tar":
        members.append(("top/sub/link", "sym", "../a.txt"))  # a link that stays inside is fine
    arch = (_tar if kind == "tar" else _zip)(tmp_path / f"good.{kind}", members)
    out = extract(arch, tmp_path / "out", progress=False)
    assert (out / "top" / "a.txt").read_bytes() == b"a" and (out / "top" / "sub" / "b.txt").read_bytes() == b"bb"
    if kind == "tar":
        assert (out / "top" / "sub" / "link").read_bytes() == b"a"
    assert (out / f".extracted-good.{kind}").read_text() == "ok\n"
    (out / "top" / "a.txt").unlink()
    extract(arch, out, progress=False)  # the marker makes a second call a no-op
    assert not (out / "top" / "a.txt").exists()


def test_download_module_uses_the_safe_extract(tmp_path):
    assert dl.extract is extract and issubclass(UnsafeArchiveError, ValueError)
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        (tmp_path / "x.bin").write_bytes(b"plain")
        extract(tmp_path / "x.bin", tmp_path / "out", progress=False)
