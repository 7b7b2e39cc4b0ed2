"""The search-space file: a base recipe, fixed ``set:`` overrides and the sampled ``params:``.

    description: optimizer x lr x blocks
    base: bhat2023-sgd            # recipe name or YAML path (relative to this file first)
    set:                          # fixed dotted-key overrides
      data.val_size: 5000
      train.epochs: 10
    stages: {choices: [3, 4]}     # optional: N, the stage count that per_stage params follow
    params:
      optimizer.name: {choices: [sgd, adam]}
      optimizer.lr: {low: 0.001, high: 0.1, log: true}
      model.blocks: {choices: [[3, 2, 3], [4, 3, 3]]}       # list choices: stored as JSON strings
      model.channels: {choices: [32, 64, 128], per_stage: true}
    sampler: {seed: 0, n_startup_trials: 10}
    pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 1}

A choice may be any YAML value; a mapping choice is merged into the section its key names (a mapping
for ``model`` replaces the base's model, like ``resnet5m train --model``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from resnet5m.errors import UserError
from resnet5m.io.yamlfile import read_yaml
from resnet5m.models.registry import model_spec_to_dict
from resnet5m.training.config import RECIPE_METADATA, RunConfig, deep_merge, load_config_file, validate_config
from resnet5m.training.recipes import resolve_recipe
from resnet5m.util.validation import MAX_SEED, StrictModel, format_validation_error, short_repr

OBJECTIVES = ("val_acc", "params", "train_s")
DIRECTIONS = {"val_acc": "maximize", "params": "minimize", "train_s": "minimize"}
PRUNERS = ("median", "hyperband", "none")
STAGE_KEYS = ("blocks", "channels", "kernels", "skip_kernels", "strides")  # per-stage model lists
STAGES = "stages"  # the search-only parameter N
PER_STAGE_KEYS = ("model.blocks", "model.channels", "model.kernels", "model.skip_kernels", "model.strides")


class ParamSpec(StrictModel):
    """One sampled key: ``{choices: [...]}`` or ``{low, high, log, int, step}``; ``per_stage`` samples
    one value per stage (N from the space's ``stages``, else the base model's stage count)."""

    choices: list[Any] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = Field(False, alias="int")
    step: float | None = Field(None, gt=0)
    per_stage: bool = False

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.integer or self.step:
                raise ValueError("give either choices or low/high (with log, int, step), not both")
            encoded = [encode_choice(c) for c in self.choices]
            if len(set(map(repr, encoded))) != len(encoded):
                raise ValueError(f"choices repeat a value: {short_repr(self.choices)}")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices, or both low and high")
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low:g}, high={self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0 (got low={self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.integer and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("int needs whole-number low, high and step")
        return self

    def first(self) -> Any:
        """The value checked before any trial runs: the first choice, or low."""
        if self.choices is not None:
            return self.choices[0]
        return int(self.low) if self.integer else self.low  # type: ignore[arg-type]


class SamplerSpec(StrictModel):
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="sampler seed (reproducible trial order with one worker)")
    n_startup_trials: int = Field(10, ge=0, description="TPE: random trials before the model kicks in")
    population_size: int = Field(20, ge=2, description="NSGA-II (multi-objective): population per generation")


class PrunerSpec(StrictModel):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="median: finished trials before pruning starts")
    n_warmup_steps: int = Field(1, ge=0, description="median: epochs never pruned at the start of a trial")
    min_resource: int = Field(1, ge=1, description="hyperband: epochs of the smallest bracket")
    reduction_factor: int = Field(3, ge=2, description="hyperband: the halving rate")


class SpaceFile(StrictModel):
    description: str = ""
    base: str = Field(..., min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)
    stages: ParamSpec | int | None = None
    params: dict[str, ParamSpec] = Field(..., min_length=1)
    objectives: list[Literal["val_acc", "params", "train_s"]] = Field(default_factory=lambda: ["val_acc"])
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()

    @field_validator("set", "params")
    @classmethod
    def _keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not isinstance(key, str) or not all(key.split(".")) or key.startswith(STAGES + "["):
                raise ValueError(f"{short_repr(key)} is not a dotted config key (e.g. optimizer.lr)")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        check_objectives(v)
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: ParamSpec | int | None) -> ParamSpec | int | None:
        values = [v] if isinstance(v, int) else (v.choices or [v.low, v.high]) if v is not None else []
        if any(not isinstance(n, (int, float)) or isinstance(n, bool) or not float(n).is_integer()
               or not 1 <= n <= 8 for n in values):
            raise ValueError(f"stages must be whole numbers 1..8, got {short_repr(values)}")
        if isinstance(v, ParamSpec) and (v.per_stage or (v.choices is None and not v.integer)):
            raise ValueError("stages is a whole number: give choices, or low/high with int: true")
        return v


def check_objectives(names: list[str]) -> list[str]:
    if not names or names[0] != "val_acc" or len(names) > 2 or len(set(names)) != len(names) \
            or any(n not in OBJECTIVES for n in names):
        raise ValueError(f"objectives must be val_acc, val_acc,params or val_acc,train_s (got {','.join(names)})")
    return names


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values are None/bool/int/float/str: a list or mapping is stored as JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def decode_choice(spec: ParamSpec, stored: Any) -> Any:
    if spec.choices is not None and isinstance(stored, str) and any(isinstance(c, (list, dict)) for c in spec.choices):
        for c in spec.choices:
            if encode_choice(c) == stored:
                return c
    return stored


# --- loading ------------------------------------------------------------------------------------------

class Space:
    """A validated space file with its base config (a mapping, ``set:`` applied)."""

    def __init__(self, spec: SpaceFile, path: Path, base: dict[str, Any], base_cfg: RunConfig,
                 recipe_cfg: RunConfig) -> None:
        self.spec, self.path, self.base, self.base_cfg, self.recipe_cfg = spec, path, base, base_cfg, recipe_cfg

    @property
    def params(self) -> dict[str, ParamSpec]:
        return self.spec.params

    def fingerprint(self) -> str:
        """What must not change between runs of one study: the sampled keys and their ranges."""
        stages = self.spec.stages.model_dump(by_alias=True) if isinstance(self.spec.stages, ParamSpec) \
            else self.spec.stages
        return json.dumps({"params": {k: v.model_dump(by_alias=True) for k, v in self.params.items()},
                           "stages": stages}, sort_keys=True)


def _base_path(base: str, space_file: Path) -> str:
    candidate = space_file.parent / base
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return str(candidate)
    return resolve_recipe(base)


def load_space(path: str | Path) -> Space:
    """Read and check a space file; every problem is a one-line :class:`UserError` before any trial runs."""
    p = Path(resolve_recipe(str(path)) if not Path(path).is_file() else path)
    try:
        spec = SpaceFile.model_validate(read_yaml(p, what="search space file") or {})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(p))) from None
    base = load_config_file(_base_path(spec.base, p))
    base.pop("name", None)
    for key in RECIPE_METADATA:  # what was claimed, reported or measured for the base recipe is not true of a trial
        base.pop(key, None)
    recipe_cfg = validate_config(base, where=f"{p}: base {spec.base}")
    try:
        for key, value in spec.set.items():
            base = set_key(base, key, value)
    except UserError as exc:
        raise UserError(f"{p}: set: {exc}") from None
    base_cfg = validate_config(base, where=f"{p}: base + set")
    space = Space(spec, p, base, base_cfg, recipe_cfg)
    _check_space(space)
    return space


def _check_space(space: Space) -> None:
    where = str(space.path)
    if "data.val_size" in space.params:
        raise UserError(f"{where}: data.val_size cannot be searched (trials are compared on one fixed split)")
    if space.base_cfg.data.val_size == 0:
        raise UserError(f"{where}: the base has data.val_size 0, so trials have nothing to be scored on; "
                        "add e.g. `set: {data.val_size: 5000}` (the test set is never used by a search)")
    if any(spec.per_stage for spec in space.params.values()) or space.spec.stages is not None:
        model = model_spec_to_dict(space.base.get("model", RunConfig().model.model_dump()))
        if model.get("family") != "resnet":
            raise UserError(f"{where}: stages and per_stage params apply to resnet models, not {model.get('family')}")
    n = first_stages(space)
    for key, spec in space.params.items():  # a per-stage list of another length needs `stages:` (every choice)
        lengths = {len(c) for c in spec.choices or [] if isinstance(c, list)} if key in PER_STAGE_KEYS else set()
        if space.spec.stages is None and not spec.per_stage and lengths - {n}:
            raise UserError(f"{where}: params: {key} has choices of {sorted(lengths)} stages but the base model has "
                            f"{n}; to search another stage count, give `stages: {{choices: [N, ...]}}`: lists the "
                            "space does not sample are then cut or extended to N, and per_stage params sample N "
                            "values")
    for key, spec in space.params.items():  # each key alone, at its first value: unknown keys fail here
        value = [spec.first()] * n if spec.per_stage else spec.first()
        data = config_dict(space, {key: value}, n if space.spec.stages is not None else None)
        validate_config(data, where=f"{where}: params: {key}={short_repr(value)}")


# --- from sampled values to a run config -------------------------------------------------------------

def set_key(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``data`` with ``dotted`` set to ``value`` (a mapping value is merged into the section it names, except
    ``model``, which it replaces); under ``model.*`` a preset ``model: NAME`` becomes ``{preset: NAME, ...}``
    as with ``--set`` (training.config.apply_overrides)."""
    out = copy.deepcopy(data)
    parts = dotted.split(".")
    node = out
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None or isinstance(nxt, str):
            nxt = {"preset": nxt} if (part == "model" and isinstance(nxt, str)) else {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise UserError(f"{dotted}: {part} is not a section")
        node = nxt
    leaf, current = parts[-1], node.get(parts[-1])
    whole_model = dotted == "model"  # a model mapping replaces the recipe's model, as `train --model` does
    node[leaf] = deep_merge(current, value) if isinstance(value, dict) and isinstance(current, dict) \
        and not whole_model else copy.deepcopy(value)
    return out


def _fit_stages(values: list[Any], n: int) -> list[Any]:
    """Cut a per-stage list to ``n`` entries, or extend it by repeating its last entry."""
    return values[:n] if len(values) >= n else values + [values[-1]] * (n - len(values))


def config_dict(space: Space, values: dict[str, Any], stages: int | None) -> dict[str, Any]:
    """The base config with the sampled ``values`` (dotted key -> decoded value) applied; with ``stages``,
    the model's per-stage lists the space does not sample are cut or extended to that many stages."""
    data = copy.deepcopy(space.base)
    if stages is not None:
        data["model"] = model_spec_to_dict(data.get("model", RunConfig().model.model_dump()))
    for key, value in values.items():
        data = set_key(data, key, value)
    if stages is not None:
        model = data["model"]
        for key in STAGE_KEYS:
            if isinstance(model.get(key), list) and model[key] and len(model[key]) != stages:
                model[key] = _fit_stages(model[key], stages)
    return data


def first_stages(space: Space) -> int:
    s = space.spec.stages
    if s is None:
        model = model_spec_to_dict(space.base.get("model", RunConfig().model.model_dump()))
        return len(model.get("blocks") or [1])
    return s if isinstance(s, int) else int(s.first())


def base_stages(space: Space) -> int:
    model = model_spec_to_dict(space.base.get("model", RunConfig().model.model_dump()))
    return len(model.get("blocks") or [1])


def suggest(trial: Any, space: Space) -> tuple[dict[str, Any], int | None]:
    """Ask an Optuna trial for every parameter; returns (dotted key -> decoded value, stage count or None)."""
    s = space.spec.stages
    stages = None
    if isinstance(s, int):
        stages = s
    elif isinstance(s, ParamSpec):
        stages = int(_suggest_one(trial, STAGES, s))
    n = stages if stages is not None else base_stages(space)
    values: dict[str, Any] = {}
    for key, spec in space.params.items():
        if spec.per_stage:
            values[key] = [_suggest_one(trial, f"{key}[{i}]", spec) for i in range(n)]
        else:
            values[key] = _suggest_one(trial, key, spec)
    return values, stages


def _suggest_one(trial: Any, name: str, spec: ParamSpec) -> Any:
    if spec.choices is not None:
        return decode_choice(spec, trial.suggest_categorical(name, [encode_choice(c) for c in spec.choices]))
    assert spec.low is not None and spec.high is not None
    if spec.integer:
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
