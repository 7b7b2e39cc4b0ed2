"""Model registry (timm-style): families build an nn.Module from a config; presets name configs.

A model is described by a config (``ResNetConfig`` or ``FastNetConfig``, told apart by ``family``).
Presets are named configs of published models; their parameter counts are asserted in the tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from resnet5m.errors import UserError
from resnet5m.models.fastnet import FastNet, FastNetConfig
from resnet5m.models.resnet import ResNet, ResNetConfig
from resnet5m.util.validation import format_validation_error

ModelConfig = Annotated[Union[ResNetConfig, FastNetConfig], Field(discriminator="family")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)

BUILDERS: dict[str, Callable[[Any], nn.Module]] = {"resnet": ResNet, "fastnet": FastNet}


@dataclass(frozen=True)
class Preset:
    name: str
    config: ResNetConfig | FastNetConfig
    description: str
    params: int  # published trainable-parameter count (asserted by the tests)


PRESETS: dict[str, Preset] = {}


def register(name: str, config: ResNetConfig | FastNetConfig, description: str, params: int) -> None:
    if name in PRESETS:
        raise ValueError(f"preset {name!r} registered twice")
    PRESETS[name] = Preset(name, config, description, params)


def _rn(**kw: Any) -> ResNetConfig:
    return ResNetConfig(**kw)


register("reddy2024", _rn(blocks=[2, 2, 2], channels=[64, 128, 256]),
         "ResNet [2,2,2], 64/128/256", 2_777_674)
register("bhat2023", _rn(blocks=[3, 2, 3], channels=[64, 128, 256]),
         "ResNet [3,2,3], 64/128/256", 4_032_330)
register("bhat2023-433", _rn(blocks=[4, 3, 3], channels=[64, 128, 256]),
         "ResNet [4,3,3], 64/128/256", 4_401_738)
register("mehta2023", _rn(blocks=[3, 3, 2, 3], channels=[64, 128, 128, 256], kernels=[3] * 4,
                          skip_kernels=[1] * 4, pool=4),
         "ResNet N=4, B=[3,3,2,3], C=[64,128,128,256], F=3, K=1, P=4", 4_935_242)
register("kunkolienker2024", _rn(blocks=[3, 3, 3, 3], channels=[32, 64, 128, 256], se_ratio=16),
         "ResNet [3,3,3,3], 32/64/128/256, SE ratio 16 in every block", 4_398_890)
register("li2024", _rn(blocks=[3, 2, 4, 3], channels=[32, 64, 128, 256], activation="gelu"),
         "ResNet [3,2,4,3], 32/64/128/256, GELU", 4_587_690)
register("fast", FastNetConfig(widths=[64, 256, 256], convs_per_group=2, skip="projection", head_scale=1 / 256,
                              head_init_std=1.0, whiten_bias_epochs=3),
         "resnet5m's fast net: whitening stem, 3 residual groups 64/256/256 (1x1-conv shortcuts)", 2_055_384)
register("resnet18", _rn(blocks=[2, 2, 2, 2], channels=[64, 128, 256, 512]),
         "kuangliu's CIFAR ResNet-18 (reference; over budget)", 11_173_962)


def parse_model_config(data: dict[str, Any], where: str = "model") -> ResNetConfig | FastNetConfig:
    """Validate a dict (e.g. from YAML) as a model config; ``family`` defaults to ``resnet``."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of model settings, got {type(data).__name__}")
    data = {"family": "resnet", **data}
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, where)) from None


def resolve_model_config(spec: str | dict[str, Any] | ResNetConfig | FastNetConfig,
                         overrides: dict[str, Any] | None = None) -> ResNetConfig | FastNetConfig:
    """A preset name, a YAML path (a model mapping, or a run config with a ``model`` key), a dict or a
    config object -> a validated model config, with ``overrides`` (e.g. from CLI flags) applied."""
    if isinstance(spec, (ResNetConfig, FastNetConfig)):
        base: dict[str, Any] = spec.model_dump()
    elif isinstance(spec, dict):
        base = dict(spec)
    elif spec in PRESETS:
        base = PRESETS[spec].config.model_dump()
    elif spec.endswith((".yaml", ".yml")) or os.path.sep in spec:
        base = load_model_yaml(spec)
    else:
        raise UserError(f"unknown model {spec!r}; presets are {', '.join(PRESETS)} (or give a YAML file)")
    if overrides:
        base = {**base, **overrides}
    return parse_model_config(base, where=str(spec) if isinstance(spec, str) else "model")


def load_model_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such model file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and "model" not in data and isinstance(data.get("base"), str):
        return load_model_yaml(str(p.parent / data["base"]))  # a run recipe inheriting its model
    if isinstance(data, dict) and "model" in data:
        model = data["model"]
        if isinstance(model, str):
            return PRESETS[model].config.model_dump() if model in PRESETS else load_model_yaml(model)
        return model
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of model settings")
    return data


def build_model(cfg: ResNetConfig | FastNetConfig | str) -> nn.Module:
    if isinstance(cfg, str):
        cfg = resolve_model_config(cfg)
    return BUILDERS[cfg.family](cfg)
