"""The run directory: its file names, its writers and readers, and the one decision whether to resume.

    RUN/config.yaml        the fully resolved configuration (written before training starts)
    RUN/metrics.csv|jsonl  one row per finished epoch
    RUN/best.safetensors   weights with the best validation accuracy (or the last epoch, with val_size 0)
    RUN/last.safetensors   weights after the last checkpointed epoch
    RUN/resume.pt          everything needed to continue exactly (optimizer, RNG, EMA, ...), torch.save
    RUN/results.json       final numbers, written once at the end
A multi-seed run holds ``seeds.json``, ``summary.json`` and one run directory per seed (``seed{N}/``);
a study holds ``study.json`` and one multi-seed directory per variant.

This module is below both training and reporting: every other module names these files through it.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_write_text
from resnet5m.util.validation import MAX_SEED

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
BEST = "best.safetensors"
LAST = "last.safetensors"
RESUME = "resume.pt"
RESULTS = "results.json"
STEPS = "steps.jsonl"
SEEDS = "seeds.json"
SUMMARY = "summary.json"
STUDY = "study.json"
LOCK = ".lock"
WEIGHTS = (BEST, LAST)  # what `evaluate`/`predict`/`export` look for, in this order

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s", "images_per_s",
                 "data_share")

Status = Literal["new", "restart", "resume", "finished"]


# --- creating and classifying run directories --------------------------------------------------------

def check_name(name: str) -> str:
    """A run name is one path component: no separators, not '.' or '..'."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise UserError(f"run name {name!r} is not allowed: use letters, digits and '_.=+-', no path separators")
    return name


def check_root(root: str | Path) -> Path:
    """``--runs-dir`` must be a folder, or not exist yet (checked before any work starts)."""
    root = Path(root)
    existing = next(p for p in (root, *root.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise UserError(f"--runs-dir {root}: {existing} is a file, not a folder")
    return root


def new_run_dir(root: str | Path, name: str | None) -> Path:
    """Create a fresh run directory under ``root`` (named, or a timestamp) and return it.

    The directory is created with one ``mkdir`` (no check-then-create window): two processes asking
    for the same name cannot both get it.
    """
    root = check_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--runs-dir {root}: cannot create ({exc.strerror or exc})") from None
    if name is not None:
        run = root / check_name(name)
        try:
            run.mkdir()
        except FileExistsError:
            if not run.is_dir() or any(run.iterdir()):
                raise UserError(f"{run} already exists; use --resume {run} to continue it, or another --name") \
                    from None
        except OSError as exc:
            raise UserError(f"{run}: cannot create ({exc.strerror or exc})") from None
        return run
    stamp, i = time.strftime("%Y%m%d-%H%M%S"), 0
    while True:
        run = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            i += 1
        except OSError as exc:
            raise UserError(f"{run}: cannot create ({exc.strerror or exc})") from None


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while training it: one directory, one writer.

    An advisory ``flock`` on ``RUN/.lock``, released by the kernel on any exit (a lock left by a killed
    process is stale by construction and simply taken over); the file names the holder (PID, host) for
    the error a second writer gets. Local file systems only (NFS locking is not relied upon).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{run_dir} is being trained by {holder}; wait for it to finish or stop it first") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def status(run_dir: Path) -> Status:
    """What a run directory needs: ``finished`` (has results), ``resume`` (has a checkpoint),
    ``restart`` (set up but killed before its first checkpoint: start over in place) or ``new``."""
    if (run_dir / RESULTS).exists():
        return "finished"
    if (run_dir / RESUME).exists():
        return "resume"
    if (run_dir / CONFIG).exists():
        return "restart"
    return "new"


def has_started(run_dir: Path) -> bool:
    """True once any epoch or checkpoint was written below ``run_dir`` (a run, or any seed of one)."""
    return any(p.name in (METRICS, RESUME) for p in run_dir.rglob("*"))


def seed_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / f"seed{seed}"


# --- JSON files ----------------------------------------------------------------------------------------

def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as strict JSON (NaN/inf become null)."""
    atomic_write_text(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent}: no {path.name} ({what})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_json(run_dir / RESULTS, results)


def read_results(run_dir: Path) -> dict[str, Any]:
    data = read_json(Path(run_dir) / RESULTS, "the run has not finished")
    if not isinstance(data, dict):
        raise UserError(f"{run_dir}/{RESULTS}: expected a JSON object")
    return data


def write_seeds(run_dir: Path, seeds: list[int]) -> None:
    write_json(run_dir / SEEDS, {"seeds": seeds})


def read_seeds(run_dir: Path) -> list[int]:
    data = read_json(Path(run_dir) / SEEDS, "not a multi-seed run")
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if (not isinstance(seeds, list) or not seeds or not all(type(s) is int and 0 <= s <= MAX_SEED for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise UserError(f"{run_dir}/{SEEDS}: expected {{\"seeds\": [distinct integers from 0 to {MAX_SEED}]}}")
    return seeds


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / SUMMARY, summary)


def write_study(root: Path, spec: dict[str, Any]) -> None:
    write_json(root / STUDY, spec)


def read_study(root: Path) -> dict[str, Any]:
    data = read_json(Path(root) / STUDY, "not a study directory")
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) or "name" not in data:
        raise UserError(f"{root}/{STUDY}: expected an object with 'name' and 'variants'")
    return data


def kind(path: Path) -> Literal["study", "seeds", "run"] | None:
    """What a folder given to ``report`` is."""
    if (path / STUDY).exists():
        return "study"
    if (path / SEEDS).exists():
        return "seeds"
    if (path / RESULTS).exists() or (path / METRICS).exists():
        return "run"
    return None


# --- per-epoch metrics ---------------------------------------------------------------------------------

def _rows(text: str) -> list[dict[str, Any]]:
    return _rows_of(text, "epoch")


def _rows_of(text: str, key: str) -> list[dict[str, Any]]:
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # a torn last line (a kill mid-write by an older version): drop it
                break
            raise
        if not isinstance(row, dict) or not isinstance(row.get(key), int):
            raise ValueError(f"line {i + 1} is not a {key} row")
        rows.append(row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        raise UserError(f"{run_dir}: no {METRICS} (not a resnet5m run directory?)")
    try:
        return _rows(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: damaged ({str(exc)[:120]})") from None


class MetricsLog:
    """Per-epoch rows, rewritten atomically so a kill never leaves a torn line."""

    def __init__(self, run_dir: Path, write: bool = True) -> None:
        self.run_dir, self.writes = run_dir, write  # write=False: a process other than rank 0 keeps rows only
        self.rows: list[dict[str, Any]] = []

    def load(self, completed_epochs: int) -> None:
        """Reload the rows of the first ``completed_epochs`` epochs (rows are numbered from 1);
        rows written after the checkpoint we resume from are dropped and will be recomputed."""
        if (self.run_dir / METRICS).exists():
            self.rows = [r for r in read_metrics(self.run_dir) if r["epoch"] <= completed_epochs]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write_steps(self, losses: list[float]) -> None:
        """Every step's loss so far (``train.log_steps``), one JSON line per step."""
        if self.writes:
            atomic_write_text(self.run_dir / STEPS, "".join(json.dumps({"step": i + 1, "loss": v}) + "\n"
                                                            for i, v in enumerate(losses)))

    def read_steps(self) -> list[float]:
        path = self.run_dir / STEPS
        return [r["loss"] for r in _rows_of(path.read_text(), "step")] if path.exists() else []

    def write(self) -> None:
        if not self.writes:
            return
        atomic_write_text(self.run_dir / METRICS, "".join(json.dumps(_finite(r)) + "\n" for r in self.rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in METRIC_FIELDS})
        atomic_write_text(self.run_dir / METRICS_CSV, buf.getvalue())


def write_config(run_dir: Path, text: str) -> None:
    """The run's resolved configuration (YAML text from ``training.config.config_to_yaml``)."""
    atomic_write_text(run_dir / CONFIG, text)
