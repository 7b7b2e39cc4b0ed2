"""Training: run configs, optimizers, schedules, losses, EMA, the step and the loop, checkpoints, runs."""

from resnet5m.training.checkpoint import TrainingInterrupted
from resnet5m.training.config import RunConfig, build_config
from resnet5m.training.run import train_run, train_seeds
from resnet5m.training.trainer import NonFiniteLoss, Trainer

__all__ = ["NonFiniteLoss", "RunConfig", "Trainer", "TrainingInterrupted", "build_config", "train_run",
           "train_seeds"]
