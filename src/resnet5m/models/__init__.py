"""Models: the configurable ResNet family, the fast residual family, presets and the parameter budget."""

from resnet5m.models.budget import DEFAULT_BUDGET, check_budget, count_parameters
from resnet5m.models.fastnet import FastNet, FastNetConfig
from resnet5m.models.registry import (
    PRESETS,
    ModelConfig,
    build_model,
    model_spec_to_dict,
    parse_model_config,
    resolve_model_config,
)
from resnet5m.models.resnet import ResNet, ResNetConfig

__all__ = [
    "DEFAULT_BUDGET", "PRESETS", "FastNet", "FastNetConfig", "ModelConfig", "ResNet", "ResNetConfig",
    "build_model", "check_budget", "count_parameters", "model_spec_to_dict", "parse_model_config",
    "resolve_model_config",
]
