"""The run configuration: one validated object that fully describes a training run.

Presets are YAML files in ``configs/``; mechanics live in the modules next to this one. Unknown
keys and out-of-range values are rejected before any work starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from resnet5m.data.augment import AugmentConfig
from resnet5m.data.cifar10 import NUM_CLASSES
from resnet5m.errors import UserError
from resnet5m.io.yamlfile import parse_yaml, read_yaml
from resnet5m.models.budget import DEFAULT_BUDGET
from resnet5m.models.fastnet import FastNetConfig
from resnet5m.models.registry import PRESETS, ModelConfig, model_spec_to_dict
from resnet5m.util.validation import MAX_SEED, StrictModel, format_validation_error


class DataConfig(StrictModel):
    path: str | None = Field(None, description="CIFAR-10 location; default: $RESNET5M_DATA, cache, download")
    val_size: int = Field(5000, ge=0, le=49000, description="held-out validation images (0 = train on all)")
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    train_subset: int | None = Field(None, ge=10, description="use only this many training images (quick runs)")
    download: bool = True


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adam", "adamw", "adadelta", "adagrad", "rmsprop", "muon"] = "sgd"
    lr: float = Field(0.1, gt=0, le=10000, description="base lr (per 1024 examples when decoupled)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd/muon momentum (default 0.9); rmsprop momentum "
                                                        "(default 0, as in torch)")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    rho: float = Field(0.9, gt=0, lt=1, description="Adadelta running-average coefficient")
    alpha: float = Field(0.99, gt=0, lt=1, description="RMSprop smoothing constant")
    no_decay_bn_bias: bool = Field(False, description="no weight decay on BatchNorm and bias parameters")
    bias_lr_scale: float = Field(1.0, gt=0, le=1000, description="lr multiplier for BatchNorm/bias parameters")
    decoupled: bool = Field(False, description="SGD only: lr and weight_decay given per 1024 examples and "
                                               "independent of momentum and batch size (airbench form)")
    muon_lr: float = Field(0.24, gt=0, description="muon: lr of the orthogonalised conv-filter updates")
    muon_momentum: float = Field(0.6, ge=0, lt=1)
    muon_batched: bool | None = Field(None, description="Muon: one batched Newton-Schulz iteration for all filter "
                                                       "banks (default: on a GPU); the same update up to rounding")
    muon_compile: bool = Field(False, description="Muon: torch.compile its step (fused kernels; a runtime lever "
                                                  "for GPUs, the same update up to rounding)")
    head_lr_scale: float = Field(1.0, gt=0, le=1000, description="lr multiplier for the classifier weights")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must be in [0, 1), got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _rmsprop_default_momentum(cls, data: Any) -> Any:
        # 0.9 is the SGD default; RMSprop's own default (torch, the reference studies) is no momentum
        if isinstance(data, dict) and data.get("name") == "rmsprop" and "momentum" not in data:
            return {**data, "momentum": 0.0}
        return data

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.decoupled and self.name not in ("sgd", "muon"):
            raise ValueError(f"decoupled applies to sgd/muon only, not {self.name}")
        return self


class ScheduleConfig(StrictModel):
    name: Literal["constant", "step", "multistep", "cosine", "cosine_restarts", "plateau", "onecycle",
                  "linear"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start: float = Field(0.0, ge=0, le=1, description="lr factor at the first warm-up step")
    step_size: float = Field(30, gt=0, description="step: epochs between decays")
    milestones: list[float] = Field(default_factory=list, description="multistep: epochs of each decay")
    gamma: float = Field(0.1, gt=0, le=1)
    min_factor: float = Field(0.0, ge=0, le=1, description="cosine floor, as a fraction of the base lr")
    restart_epochs: float = Field(10, gt=0, description="cosine_restarts: length of the first cycle (T_0)")
    restart_mult: float = Field(1.0, ge=1, description="cosine_restarts: cycle length multiplier (T_mult)")
    patience: int = Field(5, ge=0, description="plateau: epochs without val improvement before decay")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau: decay factor")
    threshold: float = Field(1e-4, ge=0, description="plateau: minimum val-accuracy gain that counts")
    cooldown: int = Field(0, ge=0)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="plateau: lowest factor reached")
    peak_fraction: float = Field(0.3, ge=0, le=1, description="onecycle/linear: where the peak sits")
    start_factor: float = Field(0.04, ge=0, le=1, description="onecycle/linear: factor at step 0")
    final_factor: float = Field(0.0, ge=0, le=1, description="onecycle/linear: factor at the last step")

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(v, v[1:])) or any(m <= 0 for m in v):
            raise ValueError(f"milestones must be positive and increasing, got {v}")
        return v


class MixConfig(StrictModel):
    alpha: float = Field(1.0, gt=0, le=10)
    p: float = Field(1.0, ge=0, le=1, description="share of batches that are mixed")


class EMAConfig(StrictModel):
    decay: float = Field(0.999, gt=0, lt=1)
    every_n_steps: int = Field(1, ge=1)
    start_epoch: float = Field(0.0, ge=0)
    decay_power: float = Field(0.0, ge=0, description="decay grows as decay**every * progress**power "
                                                      "(airbench lookahead warm-up); 0 = constant")
    lookahead: bool = Field(False, description="copy the average back into the model (Lookahead-style)")


class DistillConfig(StrictModel):
    teacher: str = Field(..., description="a finished run directory or weights file of the teacher")
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term")


class ResolutionStage(StrictModel):
    until_epoch: float = Field(..., gt=0, description="train at this crop size until this epoch (may be "
                                                      "fractional: the size changes at that step)")
    size: int = Field(..., ge=8, le=32)
    mode: Literal["crop", "resize"] = Field("crop", description="crop: a random size x size window of the "
                                                                "augmented image; resize: the whole image, downsampled")


class SelectConfig(StrictModel):
    """Example selection: a cheap proxy net, trained first, scores each candidate batch of
    ``ceil(batch_size / keep)`` images; the model trains on the ``batch_size`` with the highest proxy loss."""

    keep: float = Field(..., gt=0, le=1, description="share of each candidate batch the model trains on")
    proxy: ModelConfig = Field(default_factory=lambda: FastNetConfig(widths=[32, 64, 64]),
                               description="the proxy net: a preset, YAML file or mapping, like model")
    proxy_epochs: float = Field(2.0, gt=0, le=2000, description="the proxy's training length (may be fractional)")

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy(cls, v: Any) -> Any:
        try:
            return model_spec_to_dict(v)  # the one model resolver, as for RunConfig.model
        except UserError as exc:  # reported at train.select.proxy
            raise ValueError(str(exc)) from None


class TrainConfig(StrictModel):
    epochs: float = Field(30, gt=0, le=2000, description="may be fractional: stops mid-epoch")
    batch_size: int = Field(128, ge=1, le=16384)
    eval_batch_size: int = Field(1000, ge=1, le=16384)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm")
    mixup: MixConfig | None = None
    cutmix: MixConfig | None = None
    ema: EMAConfig | None = None
    distill: DistillConfig | None = None
    init_from: str | None = Field(None, min_length=1, max_length=4096,
                                  description="start from these weights (a run directory or .safetensors file; "
                                              "fine-tuning, or training on with a new schedule): optimizer, "
                                              "schedule and step count start fresh")
    select: SelectConfig | None = Field(None, description="train on the hardest examples by a proxy net's loss")
    resolution_schedule: list[ResolutionStage] = Field(
        default_factory=list, description="progressive resizing: smaller random crops early, full size after")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N epochs without val gain")
    checkpoint_every: int = Field(1, ge=1, description="write last/resume checkpoints every N epochs")
    log_steps: bool = Field(False, description="also write every step's loss to steps.jsonl")

    @field_validator("resolution_schedule")
    @classmethod
    def _increasing(cls, v: list[ResolutionStage]) -> list[ResolutionStage]:
        ends = [s.until_epoch for s in v]
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"until_epoch must increase from stage to stage, got {ends}")
        return v


class EvalConfig(StrictModel):
    tta: Literal["none", "flip", "flip_translate"] = "none"


class Reported(StrictModel):
    """What a reference study reports for this recipe: its figures, never our measurement."""

    test_acc: list[float] = Field(..., min_length=1, description="test accuracies the study reports (0-1)")
    source: str = Field(..., description="where: the study and the table or sentence")

    @field_validator("test_acc")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not all(0 < a <= 1 for a in v):
            raise ValueError(f"accuracies are fractions in (0, 1], got {v}")
        return v


class Measured(StrictModel):
    """What resnet5m measured for this recipe as shipped (final runs on fresh seeds, test set once each)."""

    test_acc: float = Field(..., gt=0, le=1, description="mean test accuracy, with the recipe's TTA")
    test_acc_std: float = Field(0.0, ge=0)
    test_acc_no_tta: float | None = Field(None, gt=0, le=1)
    n: int = Field(..., ge=1, description="seeds")
    train_time_s: float = Field(..., gt=0, description="mean training time")
    machine: str
    date: str
    commit: str
    raw: str = Field(..., description="the benchmark JSON these numbers come from")
    note: str = ""


# what a recipe file says about itself rather than how to train: a config derived from it (a search
# trial, its best config) must drop these, since they describe the recipe, not the derived config
RECIPE_METADATA = ("description", "claimed", "reported", "measured")


class RunConfig(StrictModel):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.=+-]+$", max_length=120)
    description: str = ""
    claimed: str = Field("", description="what the original report claims, in words (see reported)")
    reported: Reported | None = Field(None, description="a reference study's own figures (not measured by us)")
    measured: Measured | None = Field(None, description="resnet5m's measurement of this recipe as shipped")
    shortened: str | None = Field(None, description="set when a quick run overrode the recipe's length/data")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig = Field(default_factory=lambda: PRESETS["reddy2024"].config)
    budget: int = Field(DEFAULT_BUDGET, ge=1)
    allow_over_budget: bool = False
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    threads: int | None = Field(None, ge=1, le=256)
    sync_batchnorm: bool = Field(False, description="with several processes: BatchNorm statistics over the "
                                                    "global batch (SyncBatchNorm) instead of per process")

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        # a preset name, YAML path or {preset: ...} becomes a mapping; pydantic then validates it
        # against its family only (a bad key names that family's fields, not every family's)
        return model_spec_to_dict(v)

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, v: str | None) -> str | None:
        if v in (".", ".."):
            raise ValueError("must not be '.' or '..' (a run name is a folder name)")
        return v

    @model_validator(mode="after")
    def _ten_classes(self) -> RunConfig:
        if self.model.num_classes != NUM_CLASSES:  # training, evaluation and prediction are CIFAR-10's
            raise ValueError(f"model.num_classes: CIFAR-10 has {NUM_CLASSES} classes (got {self.model.num_classes})")
        return self

    @model_validator(mode="after")
    def _selection_needs_validation(self) -> RunConfig:
        # without a validation split there is nothing honest to select on (never the test set)
        if self.data.val_size == 0:
            if self.schedule.name == "plateau":
                raise ValueError("schedule.name=plateau steps on the validation metric; it needs data.val_size > 0")
            if self.train.early_stopping_patience is not None:
                raise ValueError("train.early_stopping_patience needs a validation split (data.val_size > 0)")
        return self


# --- loading, overrides, saving ---------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    try:
        return parse_yaml(text, "--set value")
    except UserError:
        return text


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` assignments (values parsed as YAML) to a nested dict."""
    out = copy.deepcopy(data) if data else {}
    for item in assignments:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise UserError(f"--set {item!r}: empty key")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None or isinstance(nxt, str):
                nxt = {"preset": nxt} if (p == "model" and isinstance(nxt, str)) else {}
                node[p] = nxt
            if not isinstance(nxt, dict):
                raise UserError(f"--set {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return out


def load_config_file(path: str | Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """A run config file as a mapping, its ``base:`` chain merged in (relative to each file); a ``model:``
    path in it is made relative to the file's folder."""
    p = Path(path)
    if p.resolve() in _seen:
        raise UserError(f"{path}: its base: chain comes back to it (cycle)")
    data = read_yaml(p) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    model = data.get("model")
    if isinstance(model, str) and model not in PRESETS and not Path(model).is_absolute():
        data["model"] = str(p.parent / model)
    train = data.get("train")
    select = train.get("select") if isinstance(train, dict) else None
    proxy = select.get("proxy") if isinstance(select, dict) else None
    if isinstance(proxy, str) and proxy not in PRESETS and not Path(proxy).is_absolute():
        select["proxy"] = str(p.parent / proxy)  # relative to this file, like model:
    if "base" in data:  # `base: other.yaml` inherits, relative to this file
        base = data.pop("base")
        if not isinstance(base, str):
            raise UserError(f"{path}: base must be a file name, got {type(base).__name__}")
        data = deep_merge(load_config_file(p.parent / base, _seen | {p.resolve()}), data)
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate_config(data: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, where)) from None


def build_config(config_path: str | None = None, overrides: list[str] | None = None,
                 extra: dict[str, Any] | None = None) -> RunConfig:
    """YAML file (optional) + nested ``extra`` dict (from CLI flags) + ``--set`` assignments -> RunConfig."""
    data = load_config_file(config_path) if config_path else {}
    if extra:
        data = deep_merge(data, extra)
        if "model" in extra:  # a model given on the command line replaces the recipe's, never merges into it
            data["model"] = extra["model"]
    data = apply_overrides(data, overrides or [])
    return validate_config(data, where="config")


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# What may differ between the process that saved a checkpoint and the one that resumes it: labels, where the
# data and the device are, threads, how often to checkpoint, the budget the model already passed, how to evaluate
# at the end (TTA, batch size), and the starting weights (already in the checkpoint). Every other key decides the
# trained model, so a resume checks it unchanged.
RESUME_FREE_KEYS = ("name", "description", "claimed", "reported", "measured", "shortened", "device", "threads",
                    "data.path", "data.download", "budget", "allow_over_budget", "eval", "train.eval_batch_size",
                    "train.checkpoint_every", "train.init_from")


def resume_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The config a checkpoint records and a resume must match: all of it but :data:`RESUME_FREE_KEYS`."""
    out = cfg.model_dump(mode="json")
    for key in RESUME_FREE_KEYS:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(last, None)
    return out


def changed_since(saved: RunConfig | dict[str, Any], cfg: RunConfig) -> tuple[str, Any, Any] | None:
    """The first key (dotted, with its saved and current values) in which ``cfg`` would train differently from
    ``saved`` (a config, or a fingerprint a checkpoint recorded); None if it would not."""
    return first_difference(saved if isinstance(saved, dict) else resume_fingerprint(saved), resume_fingerprint(cfg))


def first_difference(saved: Any, now: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key whose value differs between two config dumps, with both values (None if equal).
    A key ``saved`` lacks is a setting added to resnet5m since it was written (a dump holds every key of its
    version, unset ones as None): not a difference, so an upgrade does not strand a run."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in saved:
            found = first_difference(saved.get(k), now.get(k), f"{prefix}{k}.")
            if found:
                return found
        return None
    return None if saved == now else (prefix.rstrip("."), saved, now)


def shortening_note(recipe: RunConfig, cfg: RunConfig) -> str | None:
    """'shortened: epochs=2 of 300, train_subset=5000, val_size=2000 of 5000' when ``cfg`` trains less than its
    recipe or on a different split, so that reports never pass a quick run off as the recipe."""
    notes = []
    if cfg.train.epochs < recipe.train.epochs:
        notes.append(f"epochs={cfg.train.epochs:g} of {recipe.train.epochs:g}")
    if cfg.data.train_subset is not None and cfg.data.train_subset != recipe.data.train_subset:
        notes.append(f"train_subset={cfg.data.train_subset}")
    if cfg.data.val_size != recipe.data.val_size:
        notes.append(f"val_size={cfg.data.val_size} of {recipe.data.val_size}")
    return ("shortened: " + ", ".join(notes)) if notes else None
