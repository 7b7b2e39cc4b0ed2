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
from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_write_bytes
from resnet5m.io.rundir import WEIGHTS
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


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return (state_dict, model_config_dict, info) from a weights file or run directory."""
    p = resolve_weights_path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as exc:  # damaged or foreign file
        raise UserError(f"{p}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != "resnet5m-weights" or "model_config" not in meta:
        raise UserError(f"{p}: not a resnet5m weights file (no model config in its metadata)")
    return state, json.loads(meta["model_config"]), json.loads(meta.get("info", "{}"))


def load_trained_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Build the model described in the file's metadata and load its weights (eval mode)."""
    state, cfg_dict, info = load_weights(path)
    model = build_model(parse_model_config(cfg_dict, where=str(path)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not match the stored model config ({str(exc).splitlines()[0]})") from None
    info = {**info, "weights_path": str(resolve_weights_path(path))}
    return model.to(device).eval(), info
