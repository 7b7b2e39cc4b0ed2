"""The training step and the epoch.

``train_step`` is one optimisation step: forward and loss under the run's autocast, backward through
the (fp16-only) gradient scaler, optional clipping, the scheduled lr, every optimizer's step.
``train_epoch`` runs steps over one epoch's batches with the accounting around them (``Meter``,
``StepLog``); ``Trainer`` (trainer.py) builds the pieces from a config and runs the epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from resnet5m.data.loader import Batch
from resnet5m.runtime.device import autocast
from resnet5m.training.ema import WeightAverage
from resnet5m.training.optim import set_lr_factor
from resnet5m.training.progress import EpochProgress

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets, images)


@dataclass
class StepParts:
    """What one optimisation step uses."""

    model: nn.Module  # the parameters (clipping, EMA and checkpoints use this one)
    optimizers: list[torch.optim.Optimizer]
    loss: LossFn
    forward: nn.Module | None = None  # a torch.compile'd view of ``model``, if any
    schedule: Callable[[int], float] | None = None  # step -> lr factor (None: lrs untouched)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32  # autocast precision
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    grad_clip: float | None = None


def train_step(p: StepParts, step: int, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step (``step`` counts from 0); returns the detached loss and logits."""
    with autocast(p.device, p.dtype):
        logits = (p.model if p.forward is None else p.forward)(x)
        loss = p.loss(logits, targets, x)
    for opt in p.optimizers:
        opt.zero_grad(set_to_none=True)
    p.scaler.scale(loss).backward()  # the scaler is a no-op except for fp16 on CUDA
    if p.grad_clip is not None:
        for opt in p.optimizers:
            p.scaler.unscale_(opt)  # clip the true gradients
        nn.utils.clip_grad_norm_(p.model.parameters(), p.grad_clip)
    if p.schedule is not None:
        set_lr_factor(p.optimizers, p.schedule(step))
    for opt in p.optimizers:
        p.scaler.step(opt)
    p.scaler.update()
    return loss.detach(), logits.detach()


@dataclass
class LoopState:
    """Where a run is; saved in every checkpoint."""

    epoch: int = 0  # next epoch to run
    batch: int = 0  # next batch within that epoch (non-zero only after an interrupt)
    step: int = 0  # optimizer steps taken
    best_val_acc: float = -1.0
    best_epoch: int = -1
    epochs_since_best: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0  # wall time of earlier processes of this run, up to the checkpoint resumed from
    partial: dict[str, float] = field(default_factory=dict)  # the Meter of an interrupted epoch
    stopped_early: bool = False


@dataclass
class Meter:
    """An epoch's running sums. Loss and correct counts stay float32 tensors on the device (no host sync
    per step); an interrupted epoch's sums are restored exactly, so a resumed epoch adds its losses in
    the same order and precision as an uninterrupted one."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    time: float = 0.0
    data_time: float = 0.0

    @classmethod
    def start(cls, device: torch.device, partial: dict[str, float] | None = None) -> Meter:
        p = partial or {}
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.tensor(p.get("loss_sum", 0.0), **f32), torch.tensor(p.get("correct", 0.0), **f32),
                   int(p.get("count", 0)), float(p.get("time", 0.0)), float(p.get("data_time", 0.0)))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.count += len(labels)

    def summed(self, total: Callable[[torch.Tensor], torch.Tensor]) -> Meter:
        """The sums over all processes (``total`` all-reduces; the identity in one process)."""
        sums = total(torch.stack([self.loss_sum, self.correct, self.loss_sum.new_tensor(float(self.count))]))
        return Meter(sums[0], sums[1], int(sums[2]), self.time, self.data_time)

    def state(self) -> dict[str, float]:
        return {"loss_sum": float(self.loss_sum), "correct": float(self.correct), "count": self.count,
                "time": self.time, "data_time": self.data_time}

    def row(self) -> dict[str, float]:
        """The epoch's metrics row (without lr and validation)."""
        n, t = max(1, self.count), max(1e-9, self.time)
        return {"train_loss": float(self.loss_sum) / n, "train_acc": float(self.correct) / n, "time_s": self.time,
                "images_per_s": self.count / t, "data_share": self.data_time / t}


class StepLog:
    """Checks the losses for NaN/inf and feeds the progress display every ``every`` steps (1 on CPU,
    where a sync is free; more on GPUs, so the device does not wait for the host)."""

    def __init__(self, every: int, progress: EpochProgress, lr: Callable[[], float],
                 on_nonfinite: Callable[[int, str], None]) -> None:
        self.every, self.progress, self.lr, self.on_nonfinite = every, progress, lr, on_nonfinite
        self.pending: list[tuple[int, torch.Tensor, int]] = []  # (batch index, loss, images)
        self.losses: list[float] = []  # every step's loss, in order (train.log_steps)

    def add(self, batch_index: int, loss: torch.Tensor, images: int) -> None:
        self.pending.append((batch_index, loss, images))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([loss for _, loss, _ in self.pending])
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            self.on_nonfinite(self.pending[i][0], "NaN" if bool(torch.isnan(values[i])) else "inf")
        self.losses += values.tolist()
        self.progress.update(len(self.pending), sum(n for _, _, n in self.pending), float(values[-1]), self.lr())
        self.pending = []


Prepare = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]  # batch -> (inputs, targets), e.g. mixup


def train_epoch(p: StepParts, batches: Iterator[Batch], state: LoopState, meter: Meter, log: StepLog, *,
                total_steps: int, prepare: Prepare, average: WeightAverage | None,
                stop_requested: Callable[[], bool],
                global_loss: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
    """Train on ``batches`` until they or the run's steps run out, or a stop is requested.
    ``global_loss`` turns a process's loss into the global batch's (for the log and the NaN check)."""
    while state.step < total_steps:
        t0 = time.perf_counter()
        batch = next(batches, None)  # gathered and augmented on the device: counted as data time
        if batch is None:
            break
        x, targets = prepare(batch)
        meter.data_time += time.perf_counter() - t0
        loss, logits = train_step(p, state.step, x, targets)
        state.step += 1
        state.batch += 1
        if average is not None:
            average.update(p.model, state.step)
        meter.add(loss, logits, batch.labels)
        log.add(batch.number, global_loss(loss), len(batch.labels))
        if stop_requested():
            break
    log.flush()
