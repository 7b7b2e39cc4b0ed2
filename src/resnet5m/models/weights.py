"""Weights on disk: safetensors files that carry their own model config, so a file alone can be
loaded for evaluation, prediction, export or distillation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from resnet5m import __version__
from resnet5m.data.cifar10 import NUM_CLASSES
from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_write_bytes
from resnet5m.io.rundir import WEIGHTS
from resnet5m.models.budget import DEFAULT_BUDGET, MAX_PARAMS, count_parameters
from resnet5m.models.registry import build_model, parse_model_config


def save_weights(path: str | os.PathLike[str], model: nn.Module, info: dict[str, Any] | None = None) -> None:
    """Atomically write ``model``'s state dict with its config and ``info`` in the metadata."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("model has no .config; build it with resnet5m.models.build_model")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "resnet5m-weights", "resnet5m_version": __version__,
            "model_config": json.dumps(cfg.model_dump(mode="json")),
            "info": json.dumps(info or {})}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def resolve_weights_path(path: str | os.PathLike[str]) -> Path:
    """A weights file, or a run directory (its best checkpoint, else its last)."""
    p = Path(path)
    if p.is_dir():
        for name in WEIGHTS:
            if (p / name).is_file():
                return p / name
        raise UserError(f"{p}: no {' or '.join(WEIGHTS)} in this run directory")
    if not p.is_file():
        raise UserError(f"{p}: no such run directory or weights file")
    return p




def _json(meta: dict[str, str], key: str, where: Path, default: str | None = None) -> Any:
    try:
        return json.loads(meta[key] if key in meta or default is None else default)
    except (KeyError, ValueError, RecursionError):
        raise UserError(f"{where}: damaged weights metadata ({key} is not JSON)") from None


def read_weights_file(path: str | os.PathLike[str]) -> tuple[Path, dict[str, tuple[int, ...]], dict[str, str]]:
    """(path, tensor name -> shape, metadata) from a weights file's header only: nothing is allocated."""
    p = resolve_weights_path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # damaged or foreign file: safetensors raises its own error types
        raise UserError(f"{p}: not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    if meta.get("format") != "resnet5m-weights" or "model_config" not in meta:
        raise UserError(f"{p}: not a resnet5m weights file (no model config in its metadata)")
    return p, shapes, meta


def first_shape_difference(a: dict[str, tuple[int, ...]], b: dict[str, tuple[int, ...]]) -> str | None:
    """The first tensor name one state dict has and the other lacks, else the first whose shapes differ."""
    if a == b:
        return None
    return (sorted(set(a) ^ set(b)) or [k for k in a if a[k] != b[k]])[0]


def load_weights_into(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Copy a weights file's (or run directory's best, else last) tensors into ``model``: a run's starting
    point (``train.init_from``). The file passes :func:`load_trained_model`'s checks; its tensor names and
    shapes must be the model's (another shape of network is refused, naming the first difference). Settings
    that hold no tensors (activation, dropout) may differ: a fine-tuning run may change them."""
    source, info = load_trained_model(path)
    where = info["weights_path"]
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    key = first_shape_difference(mine, theirs)
    if key is not None:
        raise UserError(f"train.init_from {where}: its model is not this run's (first difference: {key} "
                        f"{theirs.get(key, 'missing')} vs {mine.get(key, 'missing')} here); train the same model, "
                        "e.g. --config RUN/config.yaml --init-from RUN")
    model.load_state_dict(source.state_dict())
    return Path(where)


def load_trained_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Build the model described in the file's metadata and load its weights (eval mode).

    Before anything is allocated, the described model is built on the meta device and checked: its size
    against the run's parameter budget (unless the run was allowed over it; never past ``MAX_PARAMS``),
    and its tensor names and shapes against the file's header. Non-finite weights are refused.
    """
    p, shapes, meta = read_weights_file(path)
    cfg = parse_model_config(_json(meta, "model_config", p), where=f"{p} (model config)")
    if cfg.num_classes != NUM_CLASSES:
        raise UserError(f"{p}: describes a model with {cfg.num_classes} output classes; resnet5m evaluates and "
                        f"predicts CIFAR-10's {NUM_CLASSES}")
    info = _json(meta, "info", p, default="{}")
    if not isinstance(info, dict):
        raise UserError(f"{p}: damaged weights metadata (info is not a mapping)")
    with torch.device("meta"):
        described = build_model(cfg)
    n = count_parameters(described)
    budget = info.get("budget") if isinstance(info.get("budget"), int) else DEFAULT_BUDGET
    limit = MAX_PARAMS if info.get("allow_over_budget") is True else min(budget, MAX_PARAMS)
    if n > limit:
        raise UserError(f"{p}: describes a model of {n:,} trainable parameters, over the limit of {limit:,} "
                        f"({'the hard limit' if limit == MAX_PARAMS else 'its run budget'}); refused")
    expected = {k: tuple(v.shape) for k, v in described.state_dict().items()}
    wrong = first_shape_difference(expected, shapes)
    if wrong is not None:
        raise UserError(f"{p}: weights do not match the stored model config (first difference: {wrong})")
    with safe_open(str(p), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{p}: weight {bad} holds NaN or inf values; refused")
    model = build_model(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), {**info, "weights_path": str(p)}
