"""Training: run configs, optimizers, schedules, losses, EMA, the loop, checkpoints and resume."""

from resnet5m.training.config import RunConfig, build_config
from resnet5m.training.engine import NonFiniteLoss, Trainer, TrainingInterrupted, train_run

__all__ = ["NonFiniteLoss", "RunConfig", "Trainer", "TrainingInterrupted", "build_config", "train_run"]
