"""Download of the official CIFAR-10 tarball: streamed, checksummed, atomic, safely extracted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_path, atomic_write_text

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL_NAME = "cifar-10-python.tar.gz"
EXTRACTED_NAME = "cifar-10-batches-py"
MD5_OK_SUFFIX = ".md5-ok"  # marker beside a verified file: hashing 170 MB on every run is not free


def file_md5(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike[str], md5: str | None, *, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``dest``, verifying ``md5`` before the file appears under its final name.

    A killed or failed download leaves at most a hidden ``.tmp`` file, never a file at ``dest``.
    """
    dest = Path(dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            h = hashlib.md5()
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                              desc=f"downloading {dest.name}", leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            if total is not None and tmp.stat().st_size != total:
                raise UserError(f"{url}: download truncated ({tmp.stat().st_size} of {total} bytes)")
            if md5 is not None and h.hexdigest() != md5:
                raise UserError(f"{url}: MD5 mismatch (got {h.hexdigest()}, expected {md5}); nothing was kept")
    except (urllib.error.URLError, OSError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"{url}: download failed ({reason}); pass --data PATH to use a local copy") from None
    except Exception as exc:  # http.client.IncompleteRead and friends
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    return dest


def _safe_members(tar: tarfile.TarFile, target: Path) -> list[tarfile.TarInfo]:
    """Refuse absolute paths, '..', links and device files: nothing may land outside ``target``."""
    root = target.resolve()
    members = []
    for m in tar.getmembers():
        dest = (root / m.name).resolve()
        if os.path.isabs(m.name) or ".." in Path(m.name).parts or not dest.is_relative_to(root):
            raise UserError(f"{tar.name}: archive member {m.name!r} would escape the target folder; refused")
        if not (m.isfile() or m.isdir()):
            raise UserError(f"{tar.name}: archive member {m.name!r} is a link or special file; refused")
        members.append(m)
    return members


def safe_extract(tarball: str | os.PathLike[str], target_dir: str | os.PathLike[str]) -> Path:
    """Extract ``tarball`` into ``target_dir`` via a temporary folder renamed into place at the end."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target_dir))
    try:
        try:
            with tarfile.open(tarball, "r:*") as tar:
                members = _safe_members(tar, tmp)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"{tarball}: truncated or corrupt archive ({exc})") from None
        src = tmp / EXTRACTED_NAME
        if not src.is_dir():
            raise UserError(f"{tarball}: archive has no {EXTRACTED_NAME}/ folder")
        final = target_dir / EXTRACTED_NAME
        if final.exists():
            shutil.rmtree(final)
        os.replace(src, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def md5_marker(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + MD5_OK_SUFFIX)


def _mark_verified(path: Path, md5: str) -> None:
    atomic_write_text(md5_marker(path), json.dumps({"md5": md5, **_stamp(path)}) + "\n")


def verified_md5(path: str | os.PathLike[str], md5: str) -> str | None:
    """None when ``path`` has MD5 ``md5``, else the MD5 it has.

    A match is remembered in a ``.md5-ok`` marker beside the file (written atomically), valid while the
    file keeps its size and modification time, so the hash is computed once, not on every run.
    """
    path = Path(path)
    marker = md5_marker(path)
    try:
        if json.loads(marker.read_text()) == {"md5": md5, **_stamp(path)}:
            return None
    except (OSError, ValueError):
        pass  # no marker, unreadable, or stale: hash the file
    got = file_md5(path)
    if got != md5:
        marker.unlink(missing_ok=True)
        return got
    with contextlib.suppress(OSError):  # a read-only cache still works, it just hashes again next time
        _mark_verified(path, md5)
    return None


def cached_tarball(cache_dir: str | os.PathLike[str], *, allow_download: bool = True, url: str | None = None,
                   md5: str | None = None, progress: bool = True) -> Path:
    """The verified ``cifar-10-python.tar.gz`` in ``cache_dir``, downloading it when missing or when the cached
    copy has the wrong MD5 (``allow_download``); otherwise a bad copy is a one-line error."""
    url = url or CIFAR10_URL  # read at call time, so that tests can point the module at a local server
    md5 = md5 or CIFAR10_MD5
    tarball = Path(cache_dir) / TARBALL_NAME
    if tarball.exists():
        got = verified_md5(tarball, md5)
        if got is None:
            return tarball
        if not allow_download:
            raise UserError(f"{tarball}: MD5 mismatch (got {got}, expected {md5}); the cached copy is damaged or "
                            "not the official file: delete it, or allow the download to replace it")
        # a stale or foreign file: fetch again; download() replaces it only once the new copy verifies
    elif not allow_download:
        raise UserError(f"{tarball}: not found and download is off")
    download(url, tarball, md5, progress=progress)
    _mark_verified(tarball, md5)  # download() checked the MD5 while streaming
    return tarball


def fetch_cifar10(cache_dir: str | os.PathLike[str], url: str | None = None, md5: str | None = None,
                  progress: bool = True) -> Path:
    """Make sure ``cache_dir`` holds a verified, extracted CIFAR-10 and return the extracted folder."""
    cache_dir = Path(cache_dir)
    extracted = cache_dir / EXTRACTED_NAME
    if extracted.is_dir():
        return extracted
    return safe_extract(cached_tarball(cache_dir, url=url, md5=md5, progress=progress), cache_dir)
