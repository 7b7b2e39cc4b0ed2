"""Model registry (timm-style): families build an nn.Module from a config; presets name configs.

A model is described by a config (``ResNetConfig`` or ``FastNetConfig``, told apart by ``family``).
Presets are named configs of published models; their parameter counts are asserted in the tests.

Every way of naming a model (a preset name, a YAML file, a mapping, ``{preset: NAME, ...changes}``,
a config object) goes through :func:`model_spec_to_dict`, the one resolver that the run config, the
CLI, studies and the search use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from resnet5m.errors import UserError
from resnet5m.io.yamlfile import read_yaml
from resnet5m.models.fastnet import FastNet, FastNetConfig
from resnet5m.models.resnet import ResNet, ResNetConfig
from resnet5m.util.validation import format_validation_error, short_repr

ModelConfig = Annotated[Union[ResNetConfig, FastNetConfig], Field(discriminator="family")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)

BUILDERS: dict[str, Callable[[Any], nn.Module]] = {"resnet": ResNet, "fastnet": FastNet}
DEFAULT_FAMILY = "resnet"  # a mapping without ``family`` describes a ResNet


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
register("fast", FastNetConfig(),
         "resnet5m's fast net: whitening stem, 3 residual groups 64/256/256 (1x1-conv shortcuts)", 2_055_384)
register("resnet18", _rn(blocks=[2, 2, 2, 2], channels=[64, 128, 256, 512]),
         "kuangliu's CIFAR ResNet-18 (reference; over budget)", 11_173_962)


def _unknown(name: object) -> UserError:
    return UserError(f"unknown model preset {short_repr(name)}; presets: {', '.join(PRESETS)} "
                     "(or a YAML file, or a mapping of model settings)")


def _is_yaml_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec


def model_spec_to_dict(spec: Any, *, base_dir: Path | None = None, _seen: frozenset[Path] = frozenset()
                       ) -> dict[str, Any]:
    """Resolve any model spec to a plain mapping with ``family`` set (not yet validated).

    ``spec`` is a config object, a preset name, a YAML path (a model mapping, or a run config whose
    ``model`` names one; relative paths inside it resolve against its folder, like ``base:``), or a
    mapping, optionally ``{preset: NAME, ...changes}``. ``base_dir`` anchors a relative YAML path.
    """
    if isinstance(spec, (ResNetConfig, FastNetConfig)):
        return spec.model_dump()
    if isinstance(spec, dict):
        if "preset" in spec:
            base = model_spec_to_dict(spec["preset"], base_dir=base_dir, _seen=_seen)
            return {**base, **{k: v for k, v in spec.items() if k != "preset"}}
        return {"family": DEFAULT_FAMILY, **spec}
    if isinstance(spec, str):
        if spec in PRESETS:
            return PRESETS[spec].config.model_dump()
        if _is_yaml_path(spec):
            return _model_from_yaml(Path(spec) if base_dir is None else base_dir / spec, _seen)
    raise _unknown(spec)


def _model_from_yaml(path: Path, seen: frozenset[Path]) -> dict[str, Any]:
    path = path.expanduser()
    key = path.resolve()
    if key in seen:
        raise UserError(f"{path}: refers back to itself (model/base cycle)")
    data = read_yaml(path, what="model file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of model settings")
    seen = seen | {key}
    if "model" in data:  # a run config: its model
        return model_spec_to_dict(data["model"], base_dir=path.parent, _seen=seen)
    if isinstance(data.get("base"), str) and "family" not in data:  # a run recipe inheriting its model
        return _model_from_yaml(path.parent / data["base"], seen)
    return model_spec_to_dict(data, base_dir=path.parent, _seen=seen)


def parse_model_config(data: dict[str, Any], where: str = "model") -> ResNetConfig | FastNetConfig:
    """Validate a mapping as a model config; errors name only the fields of its ``family``."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of model settings, got {type(data).__name__}")
    try:
        return _ADAPTER.validate_python({"family": DEFAULT_FAMILY, **data})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, where)) from None


def resolve_model_config(spec: Any, overrides: dict[str, Any] | None = None) -> ResNetConfig | FastNetConfig:
    """Any model spec (see :func:`model_spec_to_dict`), with ``overrides`` (e.g. CLI flags) -> a validated config."""
    base = {**model_spec_to_dict(spec), **(overrides or {})}
    return parse_model_config(base, where=spec if isinstance(spec, str) else "model")


def build_model(cfg: Any) -> nn.Module:
    """An ``nn.Module`` from a model config (or any spec :func:`resolve_model_config` accepts)."""
    if not isinstance(cfg, (ResNetConfig, FastNetConfig)):
        cfg = resolve_model_config(cfg)
    return BUILDERS[cfg.family](cfg)
