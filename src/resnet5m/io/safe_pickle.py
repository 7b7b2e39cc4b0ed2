"""A restricted unpickler for files we did not write (CIFAR batches, users' test sets).

Only plain containers, numbers, strings/bytes and numpy arrays can be rebuilt: the pickle
may name no other global, so a pickle that would import or call anything else (``os.system``,
``builtins.eval``, ...) is refused before anything runs.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from resnet5m.errors import UserError

try:  # numpy >= 2 moved the internals to numpy._core; numpy 1.x only has numpy.core
    _multiarray = importlib.import_module("numpy._core.multiarray")
    _numeric = importlib.import_module("numpy._core.numeric")
except ImportError:  # pragma: no cover - numpy 1.x
    _multiarray = importlib.import_module("numpy.core.multiarray")
    _numeric = importlib.import_module("numpy.core.numeric")

# The only globals a CIFAR-style pickle needs: numpy's array/dtype reconstructors, and the
# codec Python 3 uses to pickle ``bytes`` with protocol < 3.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): None,  # filled below: only the latin-1 form is admitted
    ("builtins", "bytearray"): bytearray,
}


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"codec {encoding!r} is not allowed")
    return text.encode("latin1", errors)


_ALLOWED[("_codecs", "encode")] = _latin1_encode


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list."""


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
            OverflowError) as exc:
        raise UserError(f"{name}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror or exc})") from None
