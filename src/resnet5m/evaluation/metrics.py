"""Accuracy, loss, per-class accuracy and the confusion matrix from logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EvalResult:
    n: int
    loss: float
    accuracy: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def to_dict(self) -> dict:
        return asdict(self)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> EvalResult:
    num_classes = num_classes or logits.shape[1]
    labels = labels.cpu().long()
    logits = logits.cpu().float()
    pred = logits.argmax(1)
    cm = confusion_matrix(pred, labels, num_classes)
    support = cm.sum(1).clamp(min=1)
    return EvalResult(
        n=len(labels),
        loss=float(F.cross_entropy(logits, labels)) if len(labels) else float("nan"),
        accuracy=float((pred == labels).float().mean()) if len(labels) else float("nan"),
        per_class_accuracy=(cm.diag().float() / support.float()).tolist(),
        confusion=cm.tolist(),
    )
