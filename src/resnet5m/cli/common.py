"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet5m.errors import UserError
from resnet5m.models.budget import DEFAULT_BUDGET
from resnet5m.models.resnet import ResNetConfig
from resnet5m.util.validation import MAX_SEED, choices, short_repr


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_between(low: int, high: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (one line naming the value otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {short_repr(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, got {short_repr(value)}")
        return value
    return parse


MAX_BATCH = 16384  # as train.batch_size and train.eval_batch_size allow
batch_size_arg = int_between(1, MAX_BATCH, "a batch size")


def _writable_dir(folder: Path, what: str) -> None:
    """Check, without creating anything, that ``folder`` is or can become a writable folder."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise UserError(f"{what} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder}: {existing} is not writable")


def check_output_file(path: str | Path, what: str = "output", inputs: tuple[str | Path, ...] = ()) -> Path:
    """Fail early, in one line, when ``path`` cannot be written as a file (a folder, under a file, read-only)
    or is one of the command's ``inputs`` (writing it would destroy what is being read)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p}: is a folder; give a file name")
    for source in inputs:
        if p.is_file() and Path(source).is_file() and os.path.samefile(p, source):
            raise UserError(f"{what} {p}: is this command's input {source}; give another file name")
    _writable_dir(p.parent if str(p.parent) else Path("."), what)
    return p


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Fail early, in one line, when ``path`` cannot be used as an output folder (a file, read-only)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p}: is a file, not a folder")
    _writable_dir(p, what)
    return p


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def seed_list(text: str) -> list[int]:
    """``--seeds``: distinct integers from 0 to MAX_SEED, comma-separated."""
    values = int_list(text)
    bad = next((v for v in values if not 0 <= v <= MAX_SEED), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"seeds must be integers from 0 to {MAX_SEED:,}, got {short_repr(bad)}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {short_repr(text)}")
    return values


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("custom architecture (override the preset/YAML)")
    g.add_argument("--blocks", type=int_list, help="blocks per stage, e.g. 3,3,2,3")
    g.add_argument("--channels", type=int_list, help="channels per stage, e.g. 64,128,128,256")
    g.add_argument("--kernels", type=int_list, help="conv kernel per stage (F_i), e.g. 3,3,3,3")
    g.add_argument("--skip-kernels", type=int_list, help="shortcut kernel per stage (K_i), e.g. 1,1,1,1")
    g.add_argument("--strides", type=int_list, help="stride per stage, e.g. 1,2,2,2")
    g.add_argument("--stem-channels", type=int, help="stem width (default: first stage's)")
    g.add_argument("--pool", type=int, help="final average-pool kernel P (default: global)")
    g.add_argument("--activation", choices=choices(ResNetConfig, "activation"))
    g.add_argument("--se-ratio", type=int, help="squeeze-and-excitation reduction ratio")
    g.add_argument("--dropout", type=float, help="dropout before the classifier")
    g.add_argument("--budget", type=positive_int, default=DEFAULT_BUDGET,
                   help="trainable-parameter budget (default 5M)")
    g.add_argument("--allow-over-budget", action="store_true", help="build models over the budget anyway")


_MODEL_FLAGS = ("blocks", "channels", "kernels", "skip_kernels", "strides", "stem_channels", "pool",
                "activation", "se_ratio", "dropout")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The architecture flags the user actually gave, as model-config keys."""
    out = {k: getattr(args, k) for k in _MODEL_FLAGS if getattr(args, k, None) is not None}
    n = len(out.get("blocks") or out.get("channels") or [])
    for key in ("kernels", "skip_kernels", "strides"):  # one value means "every stage"
        if key in out and len(out[key]) == 1 and n > 1:
            out[key] = out[key] * n
    return out


def require_model_spec(spec: str | None, overrides: dict[str, Any]) -> str | dict[str, Any]:
    if spec:
        return spec
    if "blocks" in overrides and "channels" in overrides:
        return {}
    raise UserError("give a preset name or a YAML file, or both --blocks and --channels")
