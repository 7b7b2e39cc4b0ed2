"""Every data source loads the same pixels; every bad input gives its one-line error."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest

from conftest import build_official_tarball
from resnet5m.data import download as download_mod
from resnet5m.data import load_cifar10, load_path
from resnet5m.data.download import EXTRACTED_NAME, download, fetch_cifar10, safe_extract
from resnet5m.errors import UserError


def expected_arrays(batches: dict):
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x_tr = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    y_tr = np.concatenate([b[b"labels"] for b in train])
    return x_tr, y_tr, batches["test_batch"][b"data"].reshape(-1, 3, 32, 32), np.array(batches["test_batch"][b"labels"])


def assert_matches(ds, batches):
    x_tr, y_tr, x_te, y_te = expected_arrays(batches)
    assert ds.train_images.shape == (60, 3, 32, 32) and ds.test_images.shape == (12, 3, 32, 32)
    np.testing.assert_array_equal(ds.train_images.numpy(), x_tr)
    np.testing.assert_array_equal(ds.train_labels.numpy(), y_tr)
    np.testing.assert_array_equal(ds.test_images.numpy(), x_te)
    np.testing.assert_array_equal(ds.test_labels.numpy(), y_te)


def test_tarball_folder_and_npz_give_identical_data(tiny_tarball, tmp_path):
    path, batches = tiny_tarball
    from_tar = load_path(path)
    assert_matches(from_tar, batches)

    folder = safe_extract(path, tmp_path / "out")
    assert folder.name == EXTRACTED_NAME
    assert_matches(load_path(folder), batches)
    assert_matches(load_path(folder.parent), batches)  # the parent of cifar-10-batches-py works too

    npz = tmp_path / "c.npz"
    np.savez(npz, x_train=from_tar.train_images.permute(0, 2, 3, 1).numpy(), y_train=from_tar.train_labels.numpy(),
             x_test=from_tar.test_images.permute(0, 2, 3, 1).numpy(), y_test=from_tar.test_labels.numpy())
    assert_matches(load_path(npz), batches)


def test_resolution_order_explicit_then_env_then_cache(tiny_tarball, tmp_path, monkeypatch):
    path, batches = tiny_tarball
    monkeypatch.setenv("RESNET5M_DATA", str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="RESNET5M_DATA=.*missing.npz: no such file"):
        load_cifar10()
    assert_matches(load_cifar10(path), batches)  # explicit path wins over the env var
    monkeypatch.delenv("RESNET5M_DATA")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / "cifar-10-python.tar.gz").write_bytes(path.read_bytes())
    monkeypatch.setattr(download_mod, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    assert_matches(load_cifar10(download=False), batches)


def test_nothing_found_and_download_off(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNET5M_DATA", raising=False)
    with pytest.raises(UserError, match="not found .* download is off"):
        load_cifar10(download=False)


class _Server:
    """A loopback HTTP server serving fixed bytes, optionally cutting the body short."""

    def __init__(self, body: bytes, truncate_to: int | None = None):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if truncate_to is None else body[:truncate_to])

            def log_message(self, *a):
                pass

        self.hits = 0
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_from_local_server_verifies_and_extracts(tiny_tarball, tmp_path):
    path, batches = tiny_tarball
    body = path.read_bytes()
    server = _Server(body)
    try:
        cache = tmp_path / "dl"
        folder = fetch_cifar10(cache, url=server.url, md5=hashlib.md5(body).hexdigest(), progress=False)
        assert_matches(load_path(folder), batches)
        assert (cache / "cifar-10-python.tar.gz").read_bytes() == body
        fetch_cifar10(cache, url=server.url, md5=hashlib.md5(body).hexdigest(), progress=False)
        assert server.hits == 1  # second call uses the cache
    finally:
        server.close()


def test_download_wrong_md5_leaves_nothing(tiny_tarball, tmp_path):
    path, _ = tiny_tarball
    server = _Server(path.read_bytes())
    try:
        dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
        with pytest.raises(UserError, match="MD5 mismatch"):
            download(server.url, dest, "0" * 32, progress=False)
        assert list(dest.parent.iterdir()) == []
    finally:
        server.close()


def test_truncated_download_leaves_nothing(tiny_tarball, tmp_path):
    path, _ = tiny_tarball
    body = path.read_bytes()
    server = _Server(body, truncate_to=len(body) // 2)
    try:
        dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
        with pytest.raises(UserError, match="download (failed|truncated)"):
            download(server.url, dest, hashlib.md5(body).hexdigest(), progress=False)
        assert not dest.exists() and list(dest.parent.iterdir()) == []
    finally:
        server.close()


def test_unreachable_server_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="download failed"):
        download("http://127.0.0.1:9/x.tar.gz", tmp_path / "x.tar.gz", None, progress=False, timeout=2)


def test_path_traversal_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"gotcha"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="escape"):
        safe_extract(evil, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_symlink_member_is_refused(tmp_path):
    evil = tmp_path / "link.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserError, match="link or special file"):
        safe_extract(evil, tmp_path / "target")


# --- bad inputs -------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.npz: no such file"):
        load_path(tmp_path / "nope.npz")


def _npz(tmp_path, **overrides):
    arrays = dict(x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=np.array([0, 1, 2, 3]),
                  x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.array([4, 5]))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize("overrides, message", [
    (dict(x_test=None), r"missing key\(s\) x_test"),
    (dict(x_train=np.zeros((4, 3, 32, 32), np.uint8)),
     r"x_train has shape \(4, 3, 32, 32\), expected \(N, 32, 32, 3\)"),
    (dict(x_train=np.zeros((4, 32, 32, 3), np.float32)), r"x_train has dtype float32, expected uint8"),
    (dict(y_train=np.array([0, 1, 2, 10])), r"y_train has labels outside 0..9 \(min 0, max 10\)"),
    (dict(y_test=np.array([-1, 5])), r"y_test has labels outside 0..9"),
    (dict(y_train=np.array([0, 1, 2])), r"y_train has 3 labels but there are 4 images"),
    (dict(y_train=np.array([0.0, 1.0, 2.0, 3.0])), r"y_train has dtype float64, expected integer labels"),
])
def test_bad_npz(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_path(_npz(tmp_path, **overrides))


def test_corrupt_npz(tmp_path):
    p = _npz(tmp_path)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_path(p)


def test_truncated_tarball(tiny_tarball):
    path, _ = tiny_tarball
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt archive"):
        load_path(path)


def test_garbage_tarball(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(b"this is not a tarball at all" * 100)
    with pytest.raises(UserError, match="truncated or corrupt archive"):
        load_path(p)


def test_tarball_with_bad_labels(tmp_path):
    def mutate(batches):
        batches["data_batch_3"][b"labels"][0] = 11

    p = tmp_path / "bad.tar.gz"
    build_official_tarball(p, mutate=mutate)
    with pytest.raises(UserError, match=r"data_batch_3: b.labels. has labels outside 0..9"):
        load_path(p)


def test_tarball_missing_batch(tmp_path):
    p = tmp_path / "bad.tar.gz"
    build_official_tarball(p, mutate=lambda b: b.pop("test_batch"))
    with pytest.raises(UserError, match="missing batch file.*test_batch"):
        load_path(p)


def test_folder_missing_batch(tiny_tarball, tmp_path):
    folder = safe_extract(tiny_tarball[0], tmp_path / "x")
    (folder / "data_batch_2").unlink()
    with pytest.raises(UserError, match="missing batch file data_batch_2"):
        load_path(folder)


def test_batch_with_wrong_shape(tmp_path):
    def mutate(batches):
        batches["data_batch_1"][b"data"] = np.zeros((12, 100), np.uint8)

    p = tmp_path / "bad.tar.gz"
    build_official_tarball(p, mutate=mutate)
    with pytest.raises(UserError, match=r"b'data' has shape \(12, 100\)"):
        load_path(p)


def test_malicious_batch_pickle_is_refused(tiny_tarball, tmp_path):
    folder = safe_extract(tiny_tarball[0], tmp_path / "x")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UserError, match="unsafe or unsupported pickle refused"):
        load_path(folder)
    assert not marker.exists()


def test_unsupported_extension(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("1,2,3")
    with pytest.raises(UserError, match="unsupported data file"):
        load_path(p)


def test_cached_tarball_with_wrong_md5_is_refetched(tiny_tarball, tmp_path):
    path, batches = tiny_tarball
    body = path.read_bytes()
    cache = tmp_path / "c2"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(b"stale junk")
    server = _Server(body)
    try:
        folder = fetch_cifar10(cache, url=server.url, md5=hashlib.md5(body).hexdigest(), progress=False)
        assert_matches(load_path(folder), batches)
        assert server.hits == 1
    finally:
        server.close()



# --- a tarball already in the cache dir is verified too (once, remembered in a marker) ---------------

@pytest.fixture
def cached(tiny_tarball, tmp_path, monkeypatch):
    """The tiny archive as the official file: its MD5 patched in, no RESNET5M_DATA, an empty cache dir."""
    path, batches = tiny_tarball
    body = path.read_bytes()
    monkeypatch.delenv("RESNET5M_DATA", raising=False)
    monkeypatch.setattr(download_mod, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return cache / "cifar-10-python.tar.gz", body, batches


def test_cached_tarball_with_wrong_md5_and_download_off_is_refused(cached):
    tarball, body, _ = cached
    tarball.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # one flipped bit: still opens, wrong MD5
    with pytest.raises(UserError) as err:
        load_cifar10(download=False)
    msg = str(err.value)
    assert "\n" not in msg and str(tarball) in msg and "MD5 mismatch" in msg
    assert hashlib.md5(tarball.read_bytes()).hexdigest() in msg and download_mod.CIFAR10_MD5 in msg
    assert not (tarball.parent / "cifar-10-python.tar.gz.md5-ok").exists()


def test_cached_tarball_with_wrong_md5_is_downloaded_again(cached, monkeypatch):
    tarball, body, batches = cached
    tarball.write_bytes(b"stale junk from an older, interrupted tool")
    server = _Server(body)
    monkeypatch.setattr(download_mod, "CIFAR10_URL", server.url)
    try:
        assert_matches(load_cifar10(progress=False), batches)
        assert server.hits == 1 and tarball.read_bytes() == body
    finally:
        server.close()
    assert (tarball.parent / "cifar-10-python.tar.gz.md5-ok").is_file()


def test_cached_tarball_md5_is_computed_once_and_rechecked_after_a_change(cached, monkeypatch):
    tarball, body, batches = cached
    tarball.write_bytes(body)
    hashed = []
    real_md5 = download_mod.file_md5
    monkeypatch.setattr(download_mod, "file_md5", lambda p: hashed.append(p) or real_md5(p))
    assert_matches(load_cifar10(download=False), batches)
    assert len(hashed) == 1
    marker = tarball.parent / "cifar-10-python.tar.gz.md5-ok"
    assert marker.is_file() and not list(tarball.parent.glob(".*.tmp"))
    assert_matches(load_cifar10(download=False), batches)
    assert len(hashed) == 1  # the marker spared the second hash
    # the file changes after it was verified (same size, new bytes): the marker no longer vouches for it
    before = tarball.stat().st_mtime_ns
    tarball.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    if tarball.stat().st_mtime_ns == before:  # a coarse filesystem clock: make the change visible
        os.utime(tarball, ns=(before, before + 10_000_000))
    with pytest.raises(UserError, match="MD5 mismatch"):
        load_cifar10(download=False)
    assert len(hashed) == 2 and not marker.exists()
