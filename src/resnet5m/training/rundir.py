"""Run directories: resolved config, per-epoch metrics (CSV + JSON lines), results, checkpoints.

    runs/<name>/config.yaml        the fully resolved configuration
    runs/<name>/metrics.csv|jsonl  one row per epoch
    runs/<name>/best.safetensors   weights with the best validation accuracy (or last, with val_size 0)
    runs/<name>/last.safetensors   weights after the last finished epoch
    runs/<name>/resume.safetensors everything needed to continue exactly (optimizer, RNG, EMA, ...)
    runs/<name>/results.json       final numbers, written once at the end
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from resnet5m.errors import UserError
from resnet5m.io.atomic import atomic_write_text

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s", "images_per_s",
                 "data_share")


def new_run_dir(root: str | Path, name: str | None) -> Path:
    root = Path(root)
    if name is None:
        name = time.strftime("%Y%m%d-%H%M%S")
        candidate, i = root / name, 1
        while candidate.exists():
            candidate, i = root / f"{name}-{i}", i + 1
        run = candidate
    else:
        run = root / name
        if run.exists() and any(run.iterdir()):
            raise UserError(f"{run} already exists; use --resume {run} to continue it, or another --name")
    run.mkdir(parents=True, exist_ok=True)
    return run


class MetricsLog:
    """Per-epoch rows, rewritten atomically so a kill never leaves a torn line."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []

    def load(self, completed_epochs: int) -> None:
        """Reload the rows of the first ``completed_epochs`` epochs (rows are numbered from 1);
        rows written after the checkpoint we resume from are dropped and will be recomputed."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["epoch"] <= completed_epochs]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in METRIC_FIELDS})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a resnet5m run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise UserError(f"{run_dir}: no results.json (the run has not finished)")
    return json.loads(path.read_text())


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
