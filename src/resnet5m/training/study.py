"""Studies: a base recipe plus named variants, each trained over one or more seeds.

    name: bhat2023
    base: bhat2023-sgd            # a recipe name or a YAML path (relative to this file)
    seeds: [0]
    variants:
      sgd-lr0.005: {}
      adam-lr0.005: {optimizer: {name: adam}}

Finished variant/seed runs are skipped and interrupted ones resumed, so re-running a study
continues it. Quick versions shorten every variant (``--epochs``, ``--train-subset``, or ``--set`` of
train.epochs, data.train_subset, data.val_size), and the shortening is recorded in each run's config,
against the variant's own recipe ("epochs=2 of 100"), so reports can say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from resnet5m.data.sources import load_cifar10
from resnet5m.errors import UserError
from resnet5m.io import rundir
from resnet5m.io.yamlfile import read_yaml
from resnet5m.models.budget import check_budget_before_building
from resnet5m.models.registry import build_model
from resnet5m.models.weights import read_weights_file
from resnet5m.training.config import (
    RunConfig,
    apply_overrides,
    config_to_yaml,
    deep_merge,
    first_difference,
    load_config_file,
    shortening_note,
    validate_config,
)
from resnet5m.training.recipes import resolve_recipe
from resnet5m.training.run import train_seeds
from resnet5m.training.trainer import Printer
from resnet5m.util.validation import Seed, StrictModel, format_validation_error


class StudyConfig(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.=+-]+$")
    description: str = ""
    base: str
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    variants: dict[str, dict[str, Any]] = Field(..., min_length=1)

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError("must not be '.' or '..' (a study name is a folder name)")
        return v


def load_study(path: str | Path) -> tuple[StudyConfig, Path]:
    p = Path(resolve_recipe(str(path)))
    try:
        study = StudyConfig.model_validate(read_yaml(p, what="study file") or {})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(p))) from None
    for name in study.variants:
        if not name.replace("-", "").replace("_", "").replace(".", "").replace("=", "").isalnum():
            raise UserError(f"{p}: variant name {name!r} must use letters, digits, '-', '_', '.', '='")
    return study, p


def _base_path(study: StudyConfig, study_file: Path) -> str:
    candidate = (study_file.parent / study.base)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return str(candidate)
    return resolve_recipe(study.base)


def variant_configs(study: StudyConfig, study_file: Path, overrides: list[str]) -> dict[str, RunConfig]:
    """Each variant's run config: base + variant changes + ``overrides``. A variant the overrides make
    shorter than its own unmodified config (epochs, train_subset, val_size, however they were given) is
    marked ``shortened`` with the same note ``train`` writes, e.g. 'shortened: epochs=2 of 100'."""
    base = load_config_file(_base_path(study, study_file))
    out = {}
    for name, changes in study.variants.items():
        if isinstance(base.get("model"), str) and isinstance(changes.get("model"), dict):
            changes = {**changes, "model": {"preset": base["model"], **changes["model"]}}  # tweak the preset
        where = f"{study_file} variant {name}"
        data = deep_merge(base, changes)
        data["name"] = f"{study.name}-{name}"
        unmodified = validate_config(data, where=where)
        cfg = validate_config(apply_overrides(data, overrides), where=where)
        note = shortening_note(unmodified, cfg)
        changed = first_difference(unmodified.model.model_dump(mode="json"), cfg.model.model_dump(mode="json"))
        if changed:  # --set changed the network: the study's reported figures are not for this one
            note = "; ".join(x for x in (note, f"model changed by --set: {changed[0]}={changed[2]}") if x)
        out[name] = cfg.model_copy(update={"shortened": note, "measured": None}) if note and not cfg.shortened \
            else cfg
    return out


def shortening_overrides(epochs: float | None, train_subset: int | None) -> tuple[list[str], str | None]:
    """The ``--set`` assignments for ``--epochs``/``--train-subset``, and a summary of them (kept in
    study.json to tell whether a re-run continues the same study; runs carry their own notes)."""
    sets, notes = [], []
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
        notes.append(f"epochs={epochs:g}")
    if train_subset is not None:
        sets.append(f"data.train_subset={train_subset}")
        notes.append(f"train_subset={train_subset}")
    return sets, ("shortened: " + ", ".join(notes)) if notes else None


def run_study(study_path: str, runs_dir: str | Path, *, epochs: float | None = None,
              train_subset: int | None = None, seeds: list[int] | None = None, overrides: list[str] | None = None,
              out: Printer = print, progress: bool = True) -> Path:
    study, study_file = load_study(study_path)
    sets, note = shortening_overrides(epochs, train_subset)
    configs = variant_configs(study, study_file, [*sets, *(overrides or [])])
    seeds = seeds or study.seeds
    for name, cfg in configs.items():  # every variant within its budget before anything is written
        check_budget_before_building(lambda cfg=cfg: build_model(cfg.model), cfg.budget, cfg.allow_over_budget,
                                     name=f"variant {name!r}: model ({cfg.model.family})")
        for key, weights in (("train.init_from", cfg.train.init_from),
                             ("train.distill.teacher", cfg.train.distill and cfg.train.distill.teacher)):
            if weights:  # its header only (nothing allocated): a bad file stops the study before any variant runs
                try:
                    read_weights_file(weights)
                except UserError as exc:
                    raise UserError(f"variant {name!r}: {key}: {exc}") from None
    root = Path(runs_dir) / study.name
    spec = {"name": study.name, "description": study.description, "variants": list(configs), "seeds": seeds,
            "study_file": str(study_file), "shortened": note, "overrides": overrides or []}
    if (root / rundir.STUDY).exists():
        old = rundir.read_study(root)
        if (old.get("shortened"), old.get("overrides")) != (note, overrides or []):
            raise UserError(f"{root} was started with different settings ({old.get('shortened') or 'full length'}, "
                            f"overrides {old.get('overrides')}); use another --runs-dir to keep both")
    data = load_cifar10(next(iter(configs.values())).data.path)  # the data too, before anything is written
    root.mkdir(parents=True, exist_ok=True)
    rundir.write_study(root, spec)
    for i, (name, cfg) in enumerate(configs.items(), 1):
        out(f"== study {study.name}: variant {i}/{len(configs)} '{name}' ==")
        (root / name).mkdir(exist_ok=True)
        rundir.write_config(root / name, config_to_yaml(cfg))
        rundir.write_seeds(root / name, seeds)
        train_seeds(cfg, data, root / name, seeds, out=out, progress=progress)
    return root
