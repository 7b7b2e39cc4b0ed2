"""Save and load nested training state (optimizer, scheduler, EMA, RNG, counters) without pickle.

Tensors go into a safetensors file; the structure around them (dicts with int or str keys,
lists, tuples, numbers, strings, booleans, None) is stored as JSON in the file's metadata.
Loading never executes code (no pickle is involved anywhere).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_write_bytes

_SKELETON_KEY = "resnet5m_state"


def flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in ``obj`` by a reference into ``tensors`` and return a JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"t": "tensor", "k": key}
    if isinstance(obj, dict):
        return {"t": "dict", "items": [[flatten(k, tensors), flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"t": "list" if isinstance(obj, list) else "tuple", "items": [flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"t": "v", "v": obj}
    if isinstance(obj, torch.dtype):
        return {"t": "dtype", "v": str(obj).removeprefix("torch.")}
    raise TypeError(f"cannot serialise {type(obj).__name__} in training state")


def unflatten(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    kind = skel["t"]
    if kind == "tensor":
        return tensors[skel["k"]]
    if kind == "dict":
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in skel["items"]}
    if kind == "list":
        return [unflatten(v, tensors) for v in skel["items"]]
    if kind == "tuple":
        return tuple(unflatten(v, tensors) for v in skel["items"])
    if kind == "v":
        return skel["v"]
    if kind == "dtype":
        return getattr(torch, skel["v"])
    raise ValueError(f"unknown state node {kind!r}")


def save_state(path: str | os.PathLike[str], state: Any, metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``state`` (any nesting of the supported types) to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    meta = dict(metadata or {})
    meta[_SKELETON_KEY] = json.dumps(skeleton)
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_state(path: str | os.PathLike[str]) -> Any:
    """Inverse of :func:`save_state`; raises :class:`UserError` for a missing or damaged file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    except FileNotFoundError:
        raise UserError(f"{path}: no such state file") from None
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise UserError(f"{path}: unreadable state file ({exc})") from None
    if _SKELETON_KEY not in meta:
        raise UserError(f"{path}: not a resnet5m state file (no '{_SKELETON_KEY}' metadata)")
    return unflatten(json.loads(meta[_SKELETON_KEY]), tensors)
