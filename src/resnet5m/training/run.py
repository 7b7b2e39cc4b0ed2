"""Running a config to the end: train (or resume) one run, evaluate it once on the test set, write its
results; repeat over seeds and summarise."""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from resnet5m import __version__
from resnet5m.data.cifar10 import Cifar10
from resnet5m.errors import UserError
from resnet5m.evaluation.evaluate import final_evaluation
from resnet5m.io import rundir
from resnet5m.models.budget import count_parameters
from resnet5m.models.weights import load_trained_model
from resnet5m.runtime.distributed import Dist, from_env
from resnet5m.training.checkpoint import TrainingInterrupted
from resnet5m.training.config import RunConfig, changed_since, config_to_yaml, load_config_file, validate_config
from resnet5m.training.trainer import Printer, Trainer
from resnet5m.util.stats import fmt_mean_std, summarize_seeds

NO_TEST = {"test_acc": None, "test_loss": None, "tta": None, "test_acc_no_tta": None, "test_loss_no_tta": None,
           "eval_time_s": 0.0, "tta_time_s": 0.0, "per_class_accuracy": None, "confusion": None}


def run_results(trainer: Trainer, test: bool = True) -> dict[str, Any]:
    """The run's results record; with ``test``, the selected checkpoint (best.safetensors) is evaluated
    once on the test set (a search trial passes ``test=False``: its test fields stay null)."""
    cfg, s = trainer.cfg, trainer.state
    trainer.dist.barrier()  # rank 0 has written the checkpoint the others read
    model, info = load_trained_model(trainer.run_dir / rundir.BEST, trainer.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    scores = NO_TEST if not test else final_evaluation(
        model, trainer.data.test_images, trainer.data.test_labels, tta=cfg.eval.tta,
        batch_size=cfg.train.eval_batch_size, device=trainer.device, channels_last=cfg.channels_last,
        dtype=trainer.dtype, dist=trainer.dist)
    rows = trainer.metrics.rows
    selected = next((r for r in rows if r["epoch"] == info.get("epoch")), rows[-1] if rows else {})
    return {
        "run": trainer.run_dir.name, "seed": cfg.seed, "model": cfg.model.family,
        "params": trainer.params, "total_params": count_parameters(trainer.model, trainable_only=False),
        "selection": "best validation accuracy" if cfg.data.val_size else "last epoch (no validation split)",
        "selected_epoch": info.get("epoch"), "best_val_acc": s.best_val_acc if cfg.data.val_size else None,
        "test_acc": scores["test_acc"], "test_loss": scores["test_loss"], "tta": scores["tta"],
        "test_acc_no_tta": scores["test_acc_no_tta"], "test_loss_no_tta": scores["test_loss_no_tta"],
        "train_acc": selected.get("train_acc"), "train_loss": selected.get("train_loss"),
        "epochs": s.epoch, "epochs_planned": cfg.train.epochs, "steps": s.step, "stopped_early": s.stopped_early,
        "train_time_s": s.train_time_s, "eval_time_s": scores["eval_time_s"], "tta_time_s": scores["tta_time_s"],
        "wall_time_s": trainer.wall_time(),
        "per_class_accuracy": scores["per_class_accuracy"], "confusion": scores["confusion"],
        "device": str(trainer.device), "device_name": device_name(trainer.device), "torch": torch.__version__,
        "resnet5m": __version__, "train_images": len(trainer.splits.train_y), "val_images": len(trainer.splits.val_y),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def train_run(cfg: RunConfig, data: Cifar10, run_dir: Path, *, out: Printer = print, progress: bool = True,
              test: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None,
              stop_after_s: float | None = None) -> dict[str, Any]:
    """Train one run in ``run_dir`` and evaluate it once on the test set (unless ``test`` is False, as for
    search trials); ``on_epoch`` is passed to :meth:`Trainer.fit`. With ``stop_after_s``, the run
    checkpoints and raises :class:`TrainingInterrupted` once that many seconds have passed (a job
    split into time-limited pieces; calling again resumes it).

    What happens is decided once, by :func:`rundir.status`: a finished run is not trained again (its
    results are returned), a checkpointed one resumes exactly, one killed before its first
    checkpoint starts over in place, and a new one starts.
    """
    d = from_env()
    with rundir.lock(run_dir) if d.is_main else contextlib.nullcontext():  # rank 0 is the one writer
        return _train_run(cfg, data, run_dir, out if d.is_main else _silent, progress, test, on_epoch, stop_after_s,
                          d)


def _silent(_: str) -> None:
    pass


def _train_run(cfg: RunConfig, data: Cifar10, run_dir: Path, out: Printer, progress: bool, test: bool,
               on_epoch: Callable[[dict[str, Any]], None] | None, stop_after_s: float | None,
               d: Dist) -> dict[str, Any]:
    status = d.broadcast(rundir.status(run_dir))  # one decision, rank 0's
    if status == "finished":
        out(f"{run_dir}: already finished, skipping")
        return rundir.read_results(run_dir)
    if status == "restart":
        out(f"{run_dir}: no checkpoint yet ({rundir.RESUME}); starting the run over")
    if status != "resume" and d.is_main:
        rundir.write_config(run_dir, config_to_yaml(cfg))
    trainer = Trainer(cfg, data, run_dir, out=out, progress=progress, dist=d)
    out(f"run {run_dir}: {cfg.model.family} with {trainer.params:,} trainable params on {trainer.device} "
        f"({trainer.dtype}), {len(trainer.splits.train_y)} train / {len(trainer.splits.val_y)} val images, "
        f"{trainer.epochs} epochs x {trainer.steps_per_epoch} steps")
    timer = threading.Timer(stop_after_s, trainer.stop.request) if stop_after_s is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        trainer.fit(resume=status == "resume", on_epoch=on_epoch)
    finally:
        if timer is not None:
            timer.cancel()
    results = run_results(trainer, test)
    if d.is_main:
        rundir.write_results(run_dir, results)
    if not test:
        best = results["best_val_acc"]
        val = f"best val acc {best:.4f}" if best is not None else "no validation split"
        out(f"done: {val} (epoch {results['selected_epoch']}); test set not used")
        return results
    tta = f" (TTA {results['tta']}; {results['test_acc_no_tta']:.4f} without)" if results["tta"] != "none" else ""
    best = f"best val acc {results['best_val_acc']:.4f} (epoch {results['selected_epoch']}), " \
        if results["best_val_acc"] is not None else f"selected last epoch {results['selected_epoch']}, "
    out(f"done: {best}train acc {results['train_acc']:.4f} loss {results['train_loss']:.4f}, "
        f"{results['epochs']} epochs in {results['train_time_s']:.1f}s training ({results['wall_time_s']:.1f}s wall)")
    out(f"test accuracy: {results['test_acc']:.4f}{tta}  test loss: {results['test_loss']:.4f}")
    out(f"parameters: {results['params']:,}")
    return results


def train_seeds(cfg: RunConfig, data: Cifar10, run_dir: Path, seeds: list[int], *, out: Printer = print,
                progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` once per seed (``run_dir/seed{N}``, each resumable) and write the mean ± std summary."""
    d = from_env()
    with rundir.lock(run_dir) if d.is_main else contextlib.nullcontext():
        return _train_seeds(cfg, data, run_dir, seeds, out if d.is_main else _silent, progress, d)


def _train_seeds(cfg: RunConfig, data: Cifar10, run_dir: Path, seeds: list[int], out: Printer,
                 progress: bool, d: Dist) -> dict[str, Any]:
    configs = {seed: cfg.model_copy(update={"seed": seed, "name": f"{cfg.name or run_dir.name}-seed{seed}"})
               for seed in seeds}
    for seed, seed_cfg in configs.items():  # one recipe for every seed: an edit since a seed started is refused
        saved = rundir.seed_dir(run_dir, seed) / rundir.CONFIG
        diff = changed_since(validate_config(load_config_file(saved), where=str(saved)), seed_cfg) \
            if saved.is_file() else None
        if diff:
            key, old, new = diff
            raise UserError(f"{run_dir}: {key} is {str(new)[:40]} in its {rundir.CONFIG} but seed {seed} was "
                            f"trained with {str(old)[:40]}; a run's seeds share one config (a new config is a new "
                            "run)")
    results = []
    for seed, seed_cfg in configs.items():
        try:
            results.append(train_run(seed_cfg, data, rundir.seed_dir(run_dir, seed), out=out, progress=progress))
        except TrainingInterrupted as exc:  # the hint names the whole run: its --resume does every seed
            raise exc.of_seed(seed, run_dir) from None
    summary = summarize_seeds(results)
    if d.is_main:
        rundir.write_summary(run_dir, summary)
    out(f"over {len(seeds)} seeds {seeds}: test accuracy {fmt_mean_std(summary.get('test_acc'), 100)} %, "
        f"train time {fmt_mean_std(summary.get('train_time_s'), 1, 1)} s")
    return summary
