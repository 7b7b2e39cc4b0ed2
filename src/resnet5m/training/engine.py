"""The training loop: one plain loop for every recipe, driven by a :class:`RunConfig`.

Model selection (best checkpoint, plateau schedule, early stopping) only ever sees the validation
split; the test set is touched once, after training, by :func:`final_evaluation`.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet5m import __version__
from resnet5m.data.augment import build_augment
from resnet5m.data.cifar10 import Cifar10
from resnet5m.data.loader import BatchLoader
from resnet5m.data.split import stratified_split
from resnet5m.errors import UserError
from resnet5m.evaluation.inference import predict_logits
from resnet5m.evaluation.metrics import evaluate_logits
from resnet5m.io.atomic import atomic_write_text
from resnet5m.io.state import load_state, save_state
from resnet5m.models.budget import check_budget, count_parameters
from resnet5m.models.registry import build_model
from resnet5m.models.weights import load_trained_model, save_weights
from resnet5m.runtime.device import resolve_device
from resnet5m.runtime.seeding import mix_seed, seed_everything, set_deterministic
from resnet5m.training.config import RunConfig, config_to_yaml
from resnet5m.training.ema import WeightAverage
from resnet5m.training.losses import classification_loss, distillation_loss
from resnet5m.training.mixing import mix_batch
from resnet5m.training.optim import build_optimizers, set_lr_factor
from resnet5m.training.progress import EpochProgress
from resnet5m.training.rundir import MetricsLog, write_json
from resnet5m.training.schedule import Schedule

RESUME_FILE = "resume.safetensors"
Printer = Callable[[str], None]


class NonFiniteLoss(UserError):
    exit_code = 3


class TrainingInterrupted(Exception):
    """Raised after a Ctrl-C / SIGTERM checkpoint was written."""

    def __init__(self, run_dir: Path, epoch: int, batch: int) -> None:
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {batch}; checkpoint saved. "
                         f"Continue with: resnet5m train --resume {run_dir}")
        self.run_dir = run_dir


# --- set-up ------------------------------------------------------------------------------------------

@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def make_splits(cfg: RunConfig, data: Cifar10, device: torch.device) -> Splits:
    """Stratified train/val split of the training set (and an optional stratified training subset)."""
    train_idx, val_idx = stratified_split(data.train_labels, cfg.data.val_size, cfg.data.split_seed)
    if cfg.data.train_subset is not None:
        if cfg.data.train_subset >= len(train_idx):
            raise UserError(f"data.train_subset {cfg.data.train_subset} must be below the {len(train_idx)} "
                            "training images left after the validation split")
        _, keep = stratified_split(data.train_labels[train_idx], cfg.data.train_subset, cfg.data.split_seed + 1)
        train_idx = train_idx[keep]
    return Splits(data.train_images[train_idx].to(device), data.train_labels[train_idx].to(device),
                  data.train_images[val_idx], data.train_labels[val_idx])


def precision_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """fp32 by default on CPU (bf16 autocast is slower there without AMX); bf16 on CUDA."""
    if cfg.precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def build_network(cfg: RunConfig, device: torch.device, init_images: torch.Tensor | None) -> nn.Module:
    model = build_model(cfg.model)
    check_budget(model, cfg.budget, cfg.allow_over_budget, name=f"model ({cfg.model.family})")
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if init_images is not None and hasattr(model, "init_from_data"):
        model.init_from_data(init_images.float().div(255))  # data-dependent init (e.g. patch whitening)
    return model


def load_teacher(cfg: RunConfig, device: torch.device) -> nn.Module | None:
    if cfg.train.distill is None:
        return None
    teacher, _ = load_trained_model(cfg.train.distill.teacher, device)
    if cfg.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


# --- signals -----------------------------------------------------------------------------------------

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


# --- the loop ----------------------------------------------------------------------------------------

@dataclass
class LoopState:
    epoch: int = 0  # next epoch to run
    batch: int = 0  # next batch within that epoch (non-zero only after an interrupt)
    step: int = 0  # optimizer steps taken
    best_val_acc: float = -1.0
    best_epoch: int = -1
    epochs_since_best: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0  # wall time of earlier processes of this run, up to the checkpoint resumed from
    partial: dict[str, float] = field(default_factory=dict)  # accumulators of an interrupted epoch
    stopped_early: bool = False


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Holds what one run builds from its config; :meth:`fit` runs the epochs."""

    def __init__(self, cfg: RunConfig, data: Cifar10, run_dir: Path, *, out: Printer = print,
                 progress: bool = True) -> None:
        self.process_start = time.perf_counter()
        self.cfg, self.data, self.run_dir, self.out, self.show_progress = cfg, data, run_dir, out, progress
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        self.splits = make_splits(cfg, data, self.device)
        self.dtype = precision_dtype(cfg, self.device)
        init = self.splits.train_x[:5000]
        self.model = build_network(cfg, self.device, init)
        self.params = count_parameters(self.model)
        self.teacher = load_teacher(cfg, self.device)
        t = cfg.train
        self.loader = BatchLoader(self.splits.train_x, self.splits.train_y, t.batch_size,
                                  augment=build_augment(cfg.augment), seed=cfg.seed, channels_last=cfg.channels_last)
        if len(self.splits.train_x) < t.batch_size:
            raise UserError(f"train.batch_size {t.batch_size} exceeds the {len(self.splits.train_x)} training images")
        self.steps_per_epoch = len(self.loader)
        self.total_steps = max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.optimizers = build_optimizers(self.model, cfg.optimizer, t.batch_size)
        self.schedule = Schedule(cfg.schedule, self.total_steps, self.steps_per_epoch)
        self.average = WeightAverage(self.model, t.ema, self.total_steps, self.steps_per_epoch) if t.ema else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 and self.device.type == "cuda" \
            else None
        self.forward_model: nn.Module = torch.compile(self.model) if cfg.compile else self.model
        self.metrics = MetricsLog(run_dir)
        self.state = LoopState()
        self.stop = StopRequest()

    def wall_time(self) -> float:
        """Wall time of the whole run: earlier processes (up to their checkpoint) plus this one."""
        return self.state.wall_time_s + time.perf_counter() - self.process_start

    # -- checkpoints --

    def save_resume(self) -> None:
        s = self.state
        save_state(self.run_dir / RESUME_FILE, {
            "format": 1, "epoch": s.epoch, "batch": s.batch, "step": s.step, "best_val_acc": s.best_val_acc,
            "best_epoch": s.best_epoch, "epochs_since_best": s.epochs_since_best, "train_time_s": s.train_time_s,
            "wall_time_s": self.wall_time(), "partial": dict(s.partial), "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedule": self.schedule.state_dict(), "average": self.average.state_dict() if self.average else None,
            "scaler": self.scaler.state_dict() if self.scaler else None, "rng": _rng_state(self.device),
        })

    def load_resume(self) -> None:
        st = load_state(self.run_dir / RESUME_FILE)
        self.model.load_state_dict(st["model"])
        for opt, sd in zip(self.optimizers, st["optimizers"], strict=True):
            opt.load_state_dict(sd)
        self.schedule.load_state_dict(st["schedule"])
        if self.average is not None and st["average"] is not None:
            self.average.load_state_dict(
                {"average": {k: v.to(self.device) for k, v in (st["average"]["average"] or {}).items()} or None,
                 "updates": st["average"]["updates"]})
        if self.scaler is not None and st["scaler"] is not None:
            self.scaler.load_state_dict(st["scaler"])
        _set_rng_state(st["rng"], self.device)
        self.state = LoopState(epoch=st["epoch"], batch=st["batch"], step=st["step"],
                               best_val_acc=st["best_val_acc"], best_epoch=st["best_epoch"],
                               epochs_since_best=st["epochs_since_best"], train_time_s=st["train_time_s"],
                               wall_time_s=st.get("wall_time_s", 0.0), partial=dict(st["partial"]))
        self.metrics.load(completed_epochs=self.state.epoch)

    def eval_model(self) -> nn.Module:
        return self.average.model_for_eval(self.model) if self.average else self.model

    def save_weights(self, name: str, epoch: int, val_acc: float | None) -> None:
        save_weights(self.run_dir / name, self.eval_model(),
                     {"epoch": epoch + 1, "val_acc": val_acc, "seed": self.cfg.seed, "run": self.run_dir.name})

    # -- one epoch --

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = self.cfg.train
        if self.teacher is not None and t.distill is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            return distillation_loss(logits, teacher_logits, targets, t.distill.temperature, t.distill.alpha,
                                     t.label_smoothing)
        return classification_loss(logits, targets, t.label_smoothing)

    def crop_size(self, epoch: int) -> int | None:
        for stage in self.cfg.train.resolution_schedule:
            if epoch < stage.until_epoch:
                return stage.size
        return None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, t, s = self.cfg, self.cfg.train, self.state
        model = self.forward_model
        model.train()
        if hasattr(self.model, "on_epoch_start"):
            self.model.on_epoch_start(epoch)
        acc = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "time": 0.0, "data_time": 0.0, **s.partial}
        # Continue the interrupted epoch's float32 sums (exactly representable), so that a resumed epoch
        # adds its losses in the same order and precision as an uninterrupted one.
        loss_sum = torch.tensor(acc["loss_sum"], dtype=torch.float32, device=self.device)
        correct = torch.tensor(acc["correct"], dtype=torch.float32, device=self.device)
        count = 0
        check_every = 1 if self.device.type == "cpu" else 25
        pending: list[tuple[int, torch.Tensor]] = []
        amp = (lambda: torch.autocast(self.device.type, dtype=self.dtype)) if self.dtype != torch.float32 \
            else contextlib.nullcontext
        progress = EpochProgress(epoch, self.epochs, self.steps_per_epoch - s.batch, enabled=self.show_progress)
        t_start = time.perf_counter()
        t_data = 0.0
        batch_idx = s.batch
        lr = 0.0
        batches = self.loader.epoch(epoch, start=s.batch, crop_size=self.crop_size(epoch))
        try:
            while s.step < self.total_steps:
                t0 = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                x, y = batch.images, batch.labels
                if t.mixup or t.cutmix:
                    gen = torch.Generator().manual_seed(mix_seed(cfg.seed, epoch, batch_idx, 0x313C))
                    x, targets = mix_batch(x, y, cfg.model.num_classes, t.mixup, t.cutmix, gen)
                else:
                    targets = y
                t_data += time.perf_counter() - t0
                with amp():
                    logits = model(x)
                    loss = self._loss(logits, targets, x)
                for opt in self.optimizers:
                    opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                if t.grad_clip is not None:
                    if self.scaler is not None:
                        for opt in self.optimizers:
                            self.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                lr_factor = self.schedule.factor(s.step)
                set_lr_factor(self.optimizers, lr_factor)
                for opt in self.optimizers:
                    if self.scaler is not None:
                        self.scaler.step(opt)
                    else:
                        opt.step()
                if self.scaler is not None:
                    self.scaler.update()
                s.step += 1
                batch_idx += 1
                if self.average is not None:
                    self.average.update(self.model, s.step)
                d = loss.detach()
                loss_sum += d * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                count += len(y)
                pending.append((batch_idx - 1, d))
                if len(pending) >= check_every or s.step >= self.total_steps:
                    self._check_finite(epoch, pending)
                    lr = self.optimizers[0].param_groups[0]["lr"]
                    progress.update(len(pending), len(pending) * len(y), float(pending[-1][1]), lr)
                    pending = []
                if self.stop.requested:
                    break
            if pending:
                self._check_finite(epoch, pending)
        finally:
            progress.close()
        elapsed = time.perf_counter() - t_start
        acc["loss_sum"] = float(loss_sum)
        acc["correct"] = float(correct)
        acc["count"] += count
        acc["time"] += elapsed
        acc["data_time"] += t_data
        s.train_time_s += elapsed
        s.batch = batch_idx
        if self.stop.requested and s.batch < self.steps_per_epoch and s.step < self.total_steps:
            s.partial = acc
            self.save_resume()
            raise TrainingInterrupted(self.run_dir, epoch, s.batch)
        s.partial = {}
        return acc

    def _check_finite(self, epoch: int, pending: list[tuple[int, torch.Tensor]]) -> None:
        values = torch.stack([v for _, v in pending])
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            what = "NaN" if bool(torch.isnan(values[i])) else "inf"
            last = self.run_dir / "last.safetensors"
            kept = f"the last good checkpoint ({last}) is intact" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLoss(f"loss became {what} at epoch {epoch + 1}, step {pending[i][0] + 1} of the epoch; "
                                f"stopping ({kept}). Lower the lr or add train.grad_clip")

    def validate(self) -> tuple[float | None, float | None]:
        if len(self.splits.val_y) == 0:
            return None, None
        logits = predict_logits(self.eval_model(), self.splits.val_x, batch_size=self.cfg.train.eval_batch_size,
                                device=self.device, channels_last=self.cfg.channels_last,
                                autocast_dtype=self.dtype if self.dtype != torch.float32 else None)
        r = evaluate_logits(logits, self.splits.val_y, self.cfg.model.num_classes)
        return r.loss, r.accuracy

    def fit(self, resume: bool = False) -> LoopState:
        cfg, s = self.cfg, self.state
        if resume:
            self.load_resume()
            s = self.state
            self.out(f"resuming {self.run_dir} at epoch {s.epoch + 1}, batch {s.batch}")
        with self.stop.installed():
            while s.epoch < self.epochs and s.step < self.total_steps and not s.stopped_early:
                epoch = s.epoch
                acc = self.train_epoch(epoch)
                val_loss, val_acc = self.validate()
                self.schedule.epoch_end(val_acc)
                row = {
                    "epoch": epoch + 1, "lr": self.optimizers[0].param_groups[0]["lr"],
                    "train_loss": acc["loss_sum"] / max(1, acc["count"]),
                    "train_acc": acc["correct"] / max(1, acc["count"]),
                    "val_loss": val_loss, "val_acc": val_acc, "time_s": acc["time"],
                    "images_per_s": acc["count"] / max(1e-9, acc["time"]),
                    "data_share": acc["data_time"] / max(1e-9, acc["time"]),
                }
                improved = val_acc is not None and val_acc > s.best_val_acc
                if improved:
                    s.best_val_acc, s.best_epoch, s.epochs_since_best = val_acc, epoch, 0
                    self.save_weights("best.safetensors", epoch, val_acc)
                elif val_acc is not None:
                    s.epochs_since_best += 1
                s.epoch, s.batch = epoch + 1, 0
                patience = cfg.train.early_stopping_patience
                if patience is not None and val_acc is not None and s.epochs_since_best >= patience:
                    s.stopped_early = True
                self.metrics.append(row)
                last_epoch = s.epoch >= self.epochs or s.step >= self.total_steps or s.stopped_early
                if last_epoch or s.epoch % cfg.train.checkpoint_every == 0 or self.stop.requested:
                    self.save_weights("last.safetensors", epoch, val_acc)
                    self.save_resume()
                self.out(_epoch_line(row, self.epochs, improved))
                if self.stop.requested and not last_epoch:
                    raise TrainingInterrupted(self.run_dir, s.epoch, 0)
        if len(self.splits.val_y) == 0:  # no validation: the last epoch is the selected model
            self.save_weights("best.safetensors", s.epoch - 1, None)
            s.best_epoch = s.epoch - 1
        return s


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    val = f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}{' *' if improved else ''}" \
        if row["val_acc"] is not None else "no validation split"
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  {val}  {row['time_s']:.1f}s  {row['images_per_s']:.0f} img/s")


# --- the end of a run --------------------------------------------------------------------------------

def final_evaluation(trainer: Trainer) -> dict[str, Any]:
    """Evaluate the selected checkpoint once on the test set; write and return results.json."""
    cfg, s, data = trainer.cfg, trainer.state, trainer.data
    model, info = load_trained_model(trainer.run_dir / "best.safetensors", trainer.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    kw = dict(batch_size=cfg.train.eval_batch_size, device=trainer.device, channels_last=cfg.channels_last,
              autocast_dtype=trainer.dtype if trainer.dtype != torch.float32 else None)
    t0 = time.perf_counter()
    plain = evaluate_logits(predict_logits(model, data.test_images, **kw), data.test_labels)
    t_plain = time.perf_counter() - t0
    tta, t_tta = plain, 0.0
    if cfg.eval.tta != "none":
        t0 = time.perf_counter()
        tta = evaluate_logits(predict_logits(model, data.test_images, tta=cfg.eval.tta, **kw), data.test_labels)
        t_tta = time.perf_counter() - t0
    rows = trainer.metrics.rows
    selected = next((r for r in rows if r["epoch"] == info.get("epoch")), rows[-1] if rows else {})
    results = {
        "run": trainer.run_dir.name, "seed": cfg.seed, "model": cfg.model.family,
        "params": trainer.params, "total_params": count_parameters(trainer.model, trainable_only=False),
        "selection": "best validation accuracy" if cfg.data.val_size else "last epoch (no validation split)",
        "selected_epoch": info.get("epoch"), "best_val_acc": s.best_val_acc if cfg.data.val_size else None,
        "test_acc": tta.accuracy, "test_loss": tta.loss, "tta": cfg.eval.tta,
        "test_acc_no_tta": plain.accuracy, "test_loss_no_tta": plain.loss,
        "train_acc": selected.get("train_acc"), "train_loss": selected.get("train_loss"),
        "epochs": s.epoch, "epochs_planned": cfg.train.epochs, "steps": s.step, "stopped_early": s.stopped_early,
        "train_time_s": s.train_time_s, "eval_time_s": t_plain, "tta_time_s": t_tta,
        "wall_time_s": trainer.wall_time(),
        "per_class_accuracy": tta.per_class_accuracy, "confusion": tta.confusion,
        "device": str(trainer.device), "device_name": _device_name(trainer.device), "torch": torch.__version__,
        "resnet5m": __version__, "train_images": len(trainer.splits.train_y), "val_images": len(trainer.splits.val_y),
    }
    write_json(trainer.run_dir / "results.json", results)
    return results


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def train_run(cfg: RunConfig, data: Cifar10, run_dir: Path, *, resume: bool = False, out: Printer = print,
              progress: bool = True) -> dict[str, Any]:
    """Train (or resume) one run in ``run_dir`` and evaluate it on the test set at the end."""
    if not resume:
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    trainer = Trainer(cfg, data, run_dir, out=out, progress=progress)
    if resume and not (run_dir / RESUME_FILE).exists():
        raise UserError(f"{run_dir}: nothing to resume (no {RESUME_FILE})")
    out(f"run {run_dir}: {cfg.model.family} with {trainer.params:,} trainable params on {trainer.device} "
        f"({trainer.dtype}), {len(trainer.splits.train_y)} train / {len(trainer.splits.val_y)} val images, "
        f"{trainer.epochs} epochs x {trainer.steps_per_epoch} steps")
    trainer.fit(resume=resume)
    results = final_evaluation(trainer)
    tta = f" (TTA {results['tta']}; {results['test_acc_no_tta']:.4f} without)" if results["tta"] != "none" else ""
    best = f"best val acc {results['best_val_acc']:.4f} (epoch {results['selected_epoch']}), " \
        if results["best_val_acc"] is not None else f"selected last epoch {results['selected_epoch']}, "
    out(f"done: {best}train acc {results['train_acc']:.4f} loss {results['train_loss']:.4f}, "
        f"{results['epochs']} epochs in {results['train_time_s']:.1f}s training ({results['wall_time_s']:.1f}s wall)")
    out(f"test accuracy: {results['test_acc']:.4f}{tta}  test loss: {results['test_loss']:.4f}")
    out(f"parameters: {results['params']:,}")
    return results
