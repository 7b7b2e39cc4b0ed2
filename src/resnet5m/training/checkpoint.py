"""Checkpoints and stopping: the resume file (plain ``torch.save``, loaded with ``weights_only=True``),
RNG state, and the Ctrl-C / SIGTERM handler that asks the loop to checkpoint and stop.

The resume file holds only tensors and plain Python values (dicts, lists, numbers, strings), so
loading it never runs code. Weights for evaluation and sharing are separate safetensors files
(``models/weights.py``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_path

FORMAT = 2  # 1 was resnet5m <= 0.1's home-made safetensors+JSON "resume.safetensors"
KEYS = ("format", "loop", "model", "optimizers", "schedule", "average", "scaler", "rng")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (see ``KEYS``) with ``torch.save``."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a resume file safely (``weights_only=True``, tensors on the CPU); a missing, foreign or
    damaged file is a one-line :class:`UserError`."""
    legacy = path.with_name("resume.safetensors")
    if not path.exists() and legacy.exists():
        raise UserError(f"{legacy}: written by an older resnet5m (format 1), which this version cannot resume; "
                        "start the run again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # bounded by the file
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can make torch.load raise almost anything
        raise UserError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") \
            from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a resnet5m checkpoint of format {FORMAT}")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise UserError(f"{path}: damaged checkpoint (missing {', '.join(missing)})")
    return state


class StopRequest:
    """First Ctrl-C / SIGTERM asks the loop to checkpoint and stop after the current step;
    a second Ctrl-C interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def request(self) -> None:
        """Ask for a checkpointed stop from code (e.g. a time limit) rather than a signal."""
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


class TrainingInterrupted(Exception):
    """Raised after a Ctrl-C / SIGTERM checkpoint was written."""

    def __init__(self, run_dir: Path, epoch: int, batch: int) -> None:
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {batch}; checkpoint saved. "
                         f"Continue with: resnet5m train --resume {run_dir}")
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch

    def of_seed(self, seed: int, run_dir: Path) -> TrainingInterrupted:
        """The same stop, seen from a multi-seed run: resuming ``run_dir`` continues this seed, then the rest."""
        out = TrainingInterrupted(run_dir, self.epoch, self.batch)
        out.args = (f"seed {seed} " + out.args[0],)
        return out
