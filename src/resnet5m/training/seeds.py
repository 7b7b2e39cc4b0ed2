"""Repeat a run over several seeds and report mean ± std; finished seeds are skipped on re-runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnet5m.data.cifar10 import Cifar10
from resnet5m.reporting.aggregate import fmt_mean_std, summarize_seeds
from resnet5m.training.config import RunConfig
from resnet5m.training.engine import RESUME_FILE, Printer, train_run
from resnet5m.training.rundir import write_json


def run_or_resume(cfg: RunConfig, data: Cifar10, run_dir: Path, out: Printer, progress: bool) -> dict[str, Any]:
    """Skip a finished run, resume an interrupted one, or start it."""
    results_file = run_dir / "results.json"
    if results_file.exists():
        out(f"{run_dir}: already finished, skipping")
        return json.loads(results_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = (run_dir / RESUME_FILE).exists()
    return train_run(cfg, data, run_dir, resume=resume, out=out, progress=progress)


def train_seeds(cfg: RunConfig, data: Cifar10, run_dir: Path, seeds: list[int], *, out: Printer = print,
                progress: bool = True) -> dict[str, Any]:
    results = []
    for seed in seeds:
        seed_cfg = cfg.model_copy(update={"seed": seed, "name": f"{cfg.name or run_dir.name}-seed{seed}"})
        results.append(run_or_resume(seed_cfg, data, run_dir / f"seed{seed}", out, progress))
    summary = summarize_seeds(results)
    write_json(run_dir / "summary.json", summary)
    out(f"over {len(seeds)} seeds {seeds}: test accuracy {fmt_mean_std(summary.get('test_acc'), 100)} %, "
        f"train time {fmt_mean_std(summary.get('train_time_s'), 1, 1)} s")
    return summary
