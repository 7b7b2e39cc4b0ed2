"""Evaluation: batched inference with test-time augmentation, metrics, confusion matrices."""

from resnet5m.evaluation.inference import TTA_MODES, predict_logits
from resnet5m.evaluation.metrics import EvalResult, evaluate_logits

__all__ = ["TTA_MODES", "EvalResult", "evaluate_logits", "predict_logits"]
