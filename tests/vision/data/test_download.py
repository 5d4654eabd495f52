"""Resumable, verified downloads against a loopback HTTP server (with and without Range) and file:// URLs."""

import hashlib
import io
import subprocess
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lpft.vision.data import download as dl
from lpft.vision.data import load_split
from lpft.vision.data.__main__ import main
from lpft.vision.data.fixtures import tiny_image_bytes
from lpft.vision.data.folders import load_facts


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files, honouring ``Range: bytes=N-`` unless the server says not to; records requests."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and self.server.ranges:
            start = int(rng.split("=")[1].rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(served)))
    httpd.requests, httpd.ranges = [], True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.dir = served
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _imagenet_r_tar(path: Path, wnids) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for w in wnids:
            data = tiny_image_bytes()
            info = tarfile.TarInfo(f"imagenet-r/{w}/art_0.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _blob(tmp_path, n=300_000):
    data = bytes(range(256)) * (n // 256)
    return data, hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("ranges", [True, False])
def test_fetch_resumes_partial_file(tmp_path, server, ranges):
    data, md5 = _blob(tmp_path)
    (server.dir / "blob.bin").write_bytes(data)
    server.ranges = ranges
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(data[:100_000])
    rf = dl.RemoteFile(f"{server.base}/blob.bin", "blob.bin", md5=md5)
    assert dl.fetch(rf, dest, progress=False) == dest
    assert dest.read_bytes() == data and not (dest.parent / "blob.bin.part").exists()
    assert server.requests == [("/blob.bin", "bytes=100000-")]  # asked to resume; without Range support: restart
    # a verified file is not fetched again
    dl.fetch(rf, dest, progress=False)
    assert len(server.requests) == 1


def test_complete_part_file_gets_416(tmp_path, server):
    data, md5 = _blob(tmp_path)
    (server.dir / "blob.bin").write_bytes(data)
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(data)
    dl.fetch(dl.RemoteFile(f"{server.base}/blob.bin", "blob.bin", md5=md5), dest, progress=False)
    assert dest.read_bytes() == data


def test_checksum_mismatch_deletes_and_raises(tmp_path, server):
    data, _ = _blob(tmp_path)
    (server.dir / "blob.bin").write_bytes(data)
    dest = tmp_path / "blob.bin"
    with pytest.raises(dl.ChecksumError, match="blob.bin"):
        dl.fetch(dl.RemoteFile(f"{server.base}/blob.bin", "blob.bin", sha256="0" * 64), dest, progress=False)
    assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()


def test_file_url_resume(tmp_path):
    data, md5 = _blob(tmp_path)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dest = tmp_path / "d" / "src.bin"
    dest.parent.mkdir()
    (dest.parent / "src.bin.part").write_bytes(data[:12345])
    dl.fetch(dl.RemoteFile(src.as_uri(), "src.bin", md5=md5), dest, progress=False)
    assert dest.read_bytes() == data


def test_missing_url_fails_with_resume_hint(tmp_path, server):
    with pytest.raises(OSError, match="re-run the command to resume"):
        dl.fetch(dl.RemoteFile(f"{server.base}/nothing", "nothing"), tmp_path / "x", retries=0, progress=False)


def test_git_blob_sha1_matches_git(tmp_path):
    p = tmp_path / "f.npy"
    p.write_bytes(b"\x93NUMPY fake content\n" * 50)
    try:
        want = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    assert dl.file_digest(p, "git_blob_sha1") == want
    assert dl.verify(p, dl.RemoteFile("u", "f.npy", git_blob_sha1=want)) is True
    assert dl.verify(p, dl.RemoteFile("u", "f.npy", md5="0" * 32)) is False
    assert dl.verify(p, dl.RemoteFile("u", "f.npy")) is None


def test_download_extracts_into_loader_layout(tmp_path, server, monkeypatch):
    wnids = load_facts("imagenet_r")["wnids"]
    tar = _imagenet_r_tar(server.dir / "imagenet-r.tar", wnids)
    spec = dl.DatasetSpec("imagenet-r", "test copy", ["imagenet-r"], [
        dl.RemoteFile(f"{server.base}/imagenet-r.tar", "imagenet-r.tar", md5=hashlib.md5(tar).hexdigest(), extract_to=".")])
    monkeypatch.setitem(dl.DATASETS, "imagenet-r", spec)
    root = tmp_path / "data"
    assert main(["download", "imagenet-r", "--root", str(root), "--no-progress"]) == 0
    ds = load_split("imagenet", root, "imagenet_r")
    assert len(ds) == 200 and ds.class_mask == load_facts("imagenet_r")["imagenet_indices"]
    assert not (root / ".downloads" / "imagenet-r.tar").exists()  # archive removed after extraction
    n = len(server.requests)
    assert main(["download", "imagenet-r", "--root", str(root), "--no-progress"]) == 0
    assert len(server.requests) == n  # marker: nothing fetched again


def test_licensed_datasets_print_instructions(tmp_path, capsys):
    assert main(["download", "imagenet-1k", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ILSVRC2012_img_val.tar" in out and "29b22e2961454d5413ddabcf34fc5622" in out and "imagenet/" in out
    assert main(["download", "objectnet", "--root", str(tmp_path)]) == 0
    assert "objectnet-1.0/images/<folder>/" in capsys.readouterr().out


def test_names_resolve_and_unknown_is_listed(capsys):
    assert dl.resolve("cifar10") == ["cifar-10", "stl-10", "cifar-10.1"]
    assert dl.resolve("imagenet")[0] == "imagenet-1k" and "imagenet-sketch" in dl.resolve("imagenet")
    assert main(["download", "mnist", "--root", "/nonexistent-root-x"]) == 1
    assert "expected one of: living17" in capsys.readouterr().err
    # every downloadable file carries the facts' checksum where one is known
    sentry = [f for f in dl.DATASETS["domainnet"].files if f.filename.endswith("_mini.txt")]
    assert len(sentry) == 8 and all(f.sha256 for f in sentry)
    assert all(f.git_blob_sha1 for f in dl.DATASETS["cifar-10.1"].files)
    assert dl.DATASETS["cifar-10"].files[0].md5 == "c58f30108f718f92721af3b95e74349a"


def test_imagenet_in_place_needs_no_instructions(tmp_path, capsys):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    (tmp_path / "imagenet" / "val").mkdir()
    assert dl.download("imagenet-1k", tmp_path, progress=False) == []
    assert "in place" in capsys.readouterr().out
