"""A restricted unpickler for files we did not write (CIFAR batches, users' test sets).

Only plain containers, numbers, strings/bytes and plain numeric numpy arrays can be rebuilt: the
pickle may name no other global, so a pickle that would import or call anything else (``os.system``,
``builtins.eval``, ``numpy.ndarray(shape)``, ...) is refused before anything runs, and every array's
size is bounded by the bytes the file itself holds.
"""

from __future__ import annotations

import importlib
import io
import math
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

from resnet5m.errors import UserError

try:  # numpy >= 2 moved the internals to numpy._core; numpy 1.x only has numpy.core
    _multiarray = importlib.import_module("numpy._core.multiarray")
    _numeric = importlib.import_module("numpy._core.numeric")
except ImportError:  # pragma: no cover - numpy 1.x
    _multiarray = importlib.import_module("numpy.core.multiarray")
    _numeric = importlib.import_module("numpy.core.numeric")

_SIMPLE_DTYPE = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248]|c(8|16))$")


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list."""


class _NdarrayToken:
    """Stands in for ``numpy.ndarray``: numpy's reconstructor may name it, nobody may call it (calling
    ``ndarray(shape)`` would allocate whatever the file asks for)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("numpy.ndarray may only be rebuilt by numpy's own reconstructor")


_NDARRAY = _NdarrayToken()


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """Plain numeric dtypes only (no object, string, void or structured types)."""
    if not isinstance(spec, str) or not _SIMPLE_DTYPE.match(spec):
        raise _Refused(f"dtype {str(spec)[:40]!r} is not a plain numeric type")
    return np.dtype(spec)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's pickled-array header: an empty array whose data (checked against its shape by numpy)
    arrives next, from the file itself."""
    if subtype is not _NDARRAY or shape != (0,):
        raise _Refused("unexpected array reconstruction")
    return _multiarray._reconstruct(np.ndarray, (0,), dtype)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol-5 arrays: the bytes come from the file, so their size bounds the array."""
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or not isinstance(shape, tuple) \
            or not all(isinstance(d, int) and d >= 0 for d in shape) or order not in ("C", "F"):
        raise _Refused("unexpected array buffer")
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise _Refused(f"array shape {shape} does not match its {len(buf)} bytes")
    return _numeric._frombuffer(buf, dtype, shape, order)


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused("unexpected numpy scalar")
    return _multiarray.scalar(dtype, data)


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"codec {str(encoding)[:20]!r} is not allowed")
    return text.encode("latin1", errors)


# The only globals a CIFAR-style pickle needs, each wrapped so that what it builds is bounded by the
# file's own bytes: numpy's array/dtype/scalar reconstructors, and the codec Python 3 uses to pickle
# ``bytes`` with protocol < 3.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy._core", "numpy.core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = _NDARRAY
_ALLOWED[("numpy", "dtype")] = _dtype
_ALLOWED[("_codecs", "encode")] = _latin1_encode


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"refused global {module}.{name}") from None


def _check_no_objects(obj: Any, depth: int = 0) -> None:
    """Reject object-dtype arrays (they could smuggle arbitrary structures) and absurd nesting."""
    if depth > 20:
        raise _Refused("nesting too deep")
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise _Refused("object arrays are not allowed")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_no_objects(k, depth + 1)
            _check_no_objects(v, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_no_objects(v, depth + 1)


def restricted_load(source: str | bytes | BinaryIO, *, name: str = "pickle", encoding: str = "bytes") -> Any:
    """Unpickle ``source`` (a path, raw bytes or a binary file) admitting only safe types.

    ``encoding='bytes'`` keeps Python-2 ``str`` objects (as in the official CIFAR batches) as bytes.
    Raises :class:`UserError` naming ``name`` when the pickle is refused or unreadable.
    """
    try:
        if isinstance(source, bytes):
            fh: BinaryIO = io.BytesIO(source)
        elif isinstance(source, str):
            fh = open(source, "rb")  # noqa: SIM115 - closed below
        else:
            fh = source
        try:
            obj = _RestrictedUnpickler(fh, encoding=encoding).load()
        finally:
            if isinstance(source, str):
                fh.close()
        _check_no_objects(obj)
        return obj
    except _Refused as exc:
        raise UserError(f"{name}: unsafe or unsupported pickle refused ({exc}); only plain containers, "
                        "numbers, str/bytes and numpy arrays are allowed") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise UserError(f"{name}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror or exc})") from None
