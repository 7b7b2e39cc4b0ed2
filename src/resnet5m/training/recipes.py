"""Named run recipes: the YAML files of ``configs/`` (shipped in the package as ``resnet5m/configs``)."""

from __future__ import annotations

from pathlib import Path

from resnet5m.errors import UserError

DEFAULT_RECIPE = "fast"
STANDARD_RECIPE = "standard"


def recipes_dir() -> Path:
    """``configs/`` of a source checkout (editable install), else the copy inside an installed wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "configs", here.parents[1] / "configs"):
        if candidate.is_dir():
            return candidate
    raise UserError("the recipe folder (configs/) is missing from this installation")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> str:
    """A YAML path, or the name of a recipe in configs/ (``fast``, ``reddy2024``, ``studies/bhat2023``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return str(p)
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return str(candidate)
    if p.suffix in (".yaml", ".yml"):
        raise UserError(f"{name_or_path}: no such config file")
    raise UserError(f"unknown recipe {name_or_path!r}; recipes: {', '.join(list_recipes())} (or give a YAML path)")
