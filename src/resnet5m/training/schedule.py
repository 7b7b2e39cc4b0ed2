"""Schedules as pure functions of the step: learning rate (plus a small state for reduce-on-plateau) and
progressive-resizing crop size.

Every schedule returns a factor that multiplies each parameter group's base lr, evaluated every
step; warm-up (linear from ``warmup_start``) composes with any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from resnet5m.training.config import ResolutionStage, ScheduleConfig


def _cosine(t: float, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def _restarts(epoch: float, t0: float, mult: float, floor: float) -> float:
    """SGDR: cosine cycles of length t0, t0*mult, t0*mult^2, ... (in epochs)."""
    length, start = t0, 0.0
    while epoch >= start + length:
        start += length
        length *= mult
    return _cosine((epoch - start) / length, floor)


def base_factor(cfg: ScheduleConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The schedule's factor at ``step`` ignoring warm-up (and plateau state)."""
    epoch = step / steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    progress = (step - warm) / max(1, total_steps - warm)  # 0..1 over the post-warm-up span
    name = cfg.name
    if name in ("constant", "plateau"):
        return 1.0
    if name == "step":
        return cfg.gamma ** math.floor(epoch / cfg.step_size)
    if name == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if name == "cosine":
        return _cosine(progress, cfg.min_factor)
    if name == "cosine_restarts":
        return _restarts(max(0.0, epoch - cfg.warmup_epochs), cfg.restart_epochs, cfg.restart_mult, cfg.min_factor)
    if name == "onecycle":  # cosine up to the peak, cosine down to final_factor
        t = step / max(1, total_steps)
        if t < cfg.peak_fraction:
            return cfg.start_factor + (1 - cfg.start_factor) * (1 - _cosine(t / cfg.peak_fraction, 0.0))
        return _cosine((t - cfg.peak_fraction) / max(1e-12, 1 - cfg.peak_fraction), cfg.final_factor)
    if name == "linear":  # linear warm-up to the peak, then linear decay (airbench's triangle)
        xp = [0.0, cfg.peak_fraction * total_steps, float(total_steps)]
        return float(np.interp(step, xp, [cfg.start_factor, 1.0, cfg.final_factor]))
    raise ValueError(name)  # pragma: no cover


def warmup_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int) -> float:
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm <= 0 or step >= warm:
        return 1.0
    return cfg.warmup_start + (1 - cfg.warmup_start) * step / warm


@dataclass
class Plateau:
    """Reduce-on-plateau on the validation accuracy (higher is better)."""

    cfg: ScheduleConfig
    factor: float = 1.0
    best: float = -math.inf
    bad_epochs: int = 0
    cooldown_left: int = 0

    def update(self, metric: float) -> float:
        if metric > self.best + self.cfg.threshold:
            self.best, self.bad_epochs = metric, 0
        elif self.cooldown_left > 0:
            self.cooldown_left -= 1
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            self.factor = max(self.cfg.min_lr_factor, self.factor * self.cfg.factor)
            self.bad_epochs, self.cooldown_left = 0, self.cfg.cooldown
        return self.factor

    def state_dict(self) -> dict:
        return {"factor": self.factor, "best": self.best, "bad_epochs": self.bad_epochs,
                "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.best = state["factor"], state["best"]
        self.bad_epochs, self.cooldown_left = state["bad_epochs"], state["cooldown_left"]


class Schedule:
    """The lr factor for every step: warm-up x base schedule x plateau factor."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> None:
        self.cfg, self.total_steps, self.steps_per_epoch = cfg, total_steps, steps_per_epoch
        self.plateau = Plateau(cfg) if cfg.name == "plateau" else None

    def factor(self, step: int) -> float:
        f = base_factor(self.cfg, step, self.total_steps, self.steps_per_epoch)
        f *= warmup_factor(self.cfg, step, self.steps_per_epoch)
        return f * (self.plateau.factor if self.plateau else 1.0)

    def epoch_end(self, val_metric: float | None) -> None:
        if self.plateau is not None and val_metric is not None:
            self.plateau.update(val_metric)

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def resolution_at(stages: list[ResolutionStage], step: int, steps_per_epoch: int) -> tuple[int, str] | None:
    """Progressive resizing: ``(size, mode)`` of the first stage whose ``until_epoch`` (which may be
    fractional) is still ahead of ``step``; None (full size) after the last stage."""
    for stage in stages:
        if step < round(stage.until_epoch * steps_per_epoch):
            return stage.size, stage.mode
    return None
