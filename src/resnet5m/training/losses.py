"""Losses: cross-entropy with label smoothing (hard or soft targets), knowledge distillation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy; ``targets`` are class indices (N,) or probabilities (N, C) from mixup/cutmix."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float,
                      alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al.: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    return alpha * kd + (1 - alpha) * classification_loss(student, targets, label_smoothing)


def make_loss(label_smoothing: float, teacher: nn.Module | None = None, temperature: float = 4.0,
              alpha: float = 0.9) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The run's loss as ``(logits, targets, images) -> loss``: cross-entropy, or distillation from
    ``teacher`` (which sees the same, possibly mixed, images)."""
    if teacher is None:
        return lambda logits, targets, _x: classification_loss(logits, targets, label_smoothing)

    def loss(logits: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, teacher_logits, targets, temperature, alpha, label_smoothing)

    return loss
