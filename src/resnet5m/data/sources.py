"""Where CIFAR-10 comes from: an .npz, the official tarball, its extracted folder, or a download.

Resolution order: explicit ``--data PATH`` > ``$RESNET5M_DATA`` > the user cache dir > download.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from resnet5m.data.cifar10 import Cifar10, as_array, check_images, check_labels, from_arrays, to_nchw
from resnet5m.data.download import EXTRACTED_NAME, TARBALL_NAME, cached_tarball, fetch_cifar10
from resnet5m.errors import UserError
from resnet5m.io.safe_pickle import restricted_load
from resnet5m.util.validation import short_repr

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
SINGLE_SET_KEYS = (("x_test", "y_test"), ("x", "y"), ("images", "labels"))
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def cache_dir() -> Path:
    """``$RESNET5M_CACHE``, else ``$XDG_CACHE_HOME/resnet5m``, else ``~/.cache/resnet5m``."""
    if env := os.environ.get("RESNET5M_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnet5m"


MAX_ARRAY_BYTES = 1 << 30  # per file; all of CIFAR-10 is 184 MB
MAX_ARCHIVE_BYTES = 1 << 30  # uncompressed, per tarball; the official one is ~178 MB
MAX_BATCH_BYTES = 64 << 20  # per batch file in a tarball; each official one is ~31 MB


def _check_npy_header(fh: BinaryIO, available: int, where: str) -> int:
    """Read an .npy header and refuse arrays that hold objects, or whose declared size exceeds the bytes the
    file holds or ``MAX_ARRAY_BYTES`` (numpy would allocate the declared size before reading); returns it."""
    version = np.lib.format.read_magic(fh)
    if version not in ((1, 0), (2, 0)):
        raise UserError(f"{where}: unsupported .npy version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    if dtype.hasobject:
        raise UserError(f"{where}: holds pickled objects, which are refused; store plain uint8 arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available - fh.tell() or nbytes > MAX_ARRAY_BYTES:
        raise UserError(f"{where}: declares {nbytes:,} bytes of data but holds {max(0, available - fh.tell()):,} "
                        f"(limit {MAX_ARRAY_BYTES:,}); refused")
    return nbytes


def _corrupt(path: Path, kind: str, exc: Exception) -> UserError:
    return UserError(f"{path}: truncated or corrupt {kind} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                     if str(exc) else f"{path}: truncated or corrupt {kind} ({type(exc).__name__})")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, without unpickling and without trusting its headers; a broken or
    hostile file is a one-line error."""
    try:
        total = 0
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):  # numpy would read any other member whole, unchecked
                    raise UserError(f"{path}: member {short_repr(info.filename)} is not an .npy array; "
                                    "an .npz may hold only .npy arrays")
                with zf.open(info) as fh:
                    total += _check_npy_header(fh, info.file_size, f"{path}: {info.filename}")
        if total > MAX_ARRAY_BYTES:
            raise UserError(f"{path}: declares {total:,} bytes of arrays (limit {MAX_ARRAY_BYTES:,}); refused")
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    except UserError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy's header parser raise many types on damaged input
        raise _corrupt(path, ".npz", exc) from None


def require_regular_file(path: Path) -> None:
    """A FIFO, socket or device would block or stream without end: only regular files (and folders) are read."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise UserError(f"{path}: not a regular file (a pipe, socket or device); give a file or a folder")


def read_npy(path: Path) -> np.ndarray:
    """One .npy array, checked like :func:`read_npz`."""
    require_regular_file(path)
    try:
        with open(path, "rb") as fh:
            _check_npy_header(fh, path.stat().st_size, str(path))
        return np.load(path, allow_pickle=False)
    except UserError:
        raise
    except Exception as exc:
        raise _corrupt(path, ".npy", exc) from None


def load_npz(path: Path) -> Cifar10:
    arrays = read_npz(path)
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)} (an .npz must hold {', '.join(NPZ_KEYS)})")
    return from_arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], str(path))


def _split_of(data: Cifar10, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    if split == "test":
        return data.test_images, data.test_labels, data.source
    return data.train_images, data.train_labels, data.source


def load_labeled_set(path: str | os.PathLike[str] | None,
                     split: str = "test") -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images NCHW uint8, labels, source) to evaluate on: a split of CIFAR-10 from any source, or an .npz
    holding a single labeled set under x_test/y_test, x/y or images/labels (uint8 HWC; e.g. CIFAR-10.1)."""
    p = Path(path).expanduser() if path is not None else None
    if p is None or p.suffix.lower() != ".npz" or not p.is_file():
        return _split_of(load_cifar10(path), split)
    arrays = read_npz(p)
    if all(k in arrays for k in NPZ_KEYS):  # the full CIFAR-10 layout
        return _split_of(from_arrays(*(arrays[k] for k in NPZ_KEYS), str(p)), split)
    pair = next(((x, y) for x, y in SINGLE_SET_KEYS if x in arrays and y in arrays), None)
    if pair is None:
        raise UserError(f"{p}: keys {', '.join(sorted(arrays)) or 'none'}; expected {', '.join(NPZ_KEYS)} "
                        f"or one labeled set ({', '.join('/'.join(k) for k in SINGLE_SET_KEYS)})")
    if split != "test":
        raise UserError(f"{p}: holds a single labeled set; --split {split} needs the full CIFAR-10")
    x, y = arrays[pair[0]], arrays[pair[1]]
    check_images(x, f"{p}: {pair[0]}")
    labels = check_labels(y, len(x), f"{p}: {pair[1]}")
    return torch.from_numpy(np.ascontiguousarray(to_nchw(x, f"{p}: {pair[0]}"))), torch.from_numpy(labels), str(p)


def _decode_batch(obj: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch dict -> (images NCHW uint8, labels)."""
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise UserError(f"{where}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = as_array(obj[b"data"], f"{where}: b'data'")
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise UserError(f"{where}: b'data' has shape {data.shape} dtype {data.dtype}, expected (N, 3072) uint8")
    labels = check_labels(as_array(obj[b"labels"], f"{where}: b'labels'"), len(data), f"{where}: b'labels'")
    return data.reshape(-1, 3, 32, 32), labels


def _assemble(batches: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> Cifar10:
    missing = [b for b in (*TRAIN_BATCHES, TEST_BATCH) if b not in batches]
    if missing:
        raise UserError(f"{source}: missing batch file(s) {', '.join(missing)}")
    x_tr = np.concatenate([batches[b][0] for b in TRAIN_BATCHES])
    y_tr = np.concatenate([batches[b][1] for b in TRAIN_BATCHES])
    x_te, y_te = batches[TEST_BATCH]
    return from_arrays(x_tr, y_tr, x_te, y_te, source, layout="NCHW")


def load_batches_dir(folder: Path) -> Cifar10:
    batches = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        f = folder / name
        if not f.is_file():
            raise UserError(f"{folder}: missing batch file {name} (is this a cifar-10-batches-py folder?)")
        batches[name] = _decode_batch(restricted_load(str(f), name=str(f)), str(f))
    return _assemble(batches, str(folder))


def load_tarball(path: Path) -> Cifar10:
    """Read the batches straight out of the tarball (no extraction needed)."""
    batches = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.offset_data + m.size > MAX_ARCHIVE_BYTES:  # bounded time: skipping a member decompresses it
                    raise UserError(f"{path}: holds more than {MAX_ARCHIVE_BYTES:,} bytes uncompressed "
                                    f"(at member {short_repr(m.name)}); refused")
                base = Path(m.name).name
                if m.isfile() and base in (*TRAIN_BATCHES, TEST_BATCH):
                    if m.size > MAX_BATCH_BYTES:  # a batch file is ~31 MB; read whole, so its size is bounded
                        raise UserError(f"{path}: member {short_repr(m.name)} holds {m.size:,} bytes "
                                        f"(a CIFAR-10 batch file holds ~31 MB; limit {MAX_BATCH_BYTES:,}); refused")
                    fh = tar.extractfile(m)
                    if fh is None:
                        continue
                    raw = fh.read()
                    if len(raw) != m.size:
                        raise EOFError(f"member {m.name} is cut short")
                    where = f"{path}:{m.name}"
                    batches[base] = _decode_batch(restricted_load(io.BytesIO(raw), name=where), where)
    except UserError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        detail = "empty file" if path.is_file() and path.stat().st_size == 0 else str(exc).splitlines()[0].rstrip(":")
        raise UserError(f"{path}: truncated or corrupt archive ({detail})") from None
    return _assemble(batches, str(path))


def load_path(path: str | os.PathLike[str]) -> Cifar10:
    """Load CIFAR-10 from an explicit path of any supported kind."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    require_regular_file(p)
    if p.is_dir():
        if (p / EXTRACTED_NAME).is_dir():
            return load_batches_dir(p / EXTRACTED_NAME)
        if (p / "cifar10.npz").is_file():
            return load_npz(p / "cifar10.npz")
        if (p / TARBALL_NAME).is_file():
            return load_tarball(p / TARBALL_NAME)
        return load_batches_dir(p)
    name = p.name.lower()
    if name.endswith(".npz"):
        return load_npz(p)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return load_tarball(p)
    raise UserError(f"{p}: unsupported data file; use a .npz, cifar-10-python.tar.gz or a cifar-10-batches-py folder")


def load_cifar10(path: str | os.PathLike[str] | None = None, *, download: bool = True,
                 progress: bool = True) -> Cifar10:
    """Find and load CIFAR-10 following the documented resolution order."""
    if path is not None:
        return load_path(path)
    if env := os.environ.get("RESNET5M_DATA"):
        if not Path(env).expanduser().exists():
            raise UserError(f"RESNET5M_DATA={env}: no such file or directory")
        return load_path(env)
    cache = cache_dir()
    for candidate in (cache / "cifar10.npz", cache / EXTRACTED_NAME):
        if candidate.exists():
            return load_path(candidate)
    if (cache / TARBALL_NAME).exists():  # verified (MD5, remembered) and re-downloaded if bad and allowed
        return load_tarball(cached_tarball(cache, allow_download=download, progress=progress))
    if not download:
        raise UserError(f"CIFAR-10 not found (no --data, no RESNET5M_DATA, nothing in {cache}) and download is off")
    return load_batches_dir(fetch_cifar10(cache, progress=progress))
