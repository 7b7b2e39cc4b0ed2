"""Evaluation: batched inference with test-time augmentation, metrics, confusion matrices, the final test."""

from resnet5m.evaluation.evaluate import evaluate_model, evaluate_modes, final_evaluation
from resnet5m.evaluation.inference import TTA_MODES, predict_logits
from resnet5m.evaluation.metrics import EvalResult, evaluate_logits

__all__ = ["TTA_MODES", "EvalResult", "evaluate_logits", "evaluate_model", "evaluate_modes", "final_evaluation",
           "predict_logits"]
