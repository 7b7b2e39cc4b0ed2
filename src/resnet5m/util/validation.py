"""Validated settings: the one strict base class of every config, and pydantic errors as one readable line."""

from __future__ import annotations

import typing
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_SEED = 2**32 - 1  # numpy's and Optuna's largest seed (torch's is larger): every seed field's bound
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable once validated
    (``model_copy(update=...)`` makes changed copies), and NaN/inf floats are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def choices(model: type[BaseModel], field: str) -> list[str]:
    """The values a ``Literal`` config field allows (for argparse ``choices``: one source of truth)."""
    return list(typing.get_args(model.model_fields[field].annotation))


# Discriminated-union tags pydantic puts into error locations (e.g. ``resnet.blocks``): not user keys.
_UNION_TAGS = {"resnet", "fastnet"}
MAX_ECHO = 80  # characters of a user's value repeated in an error message


def short_repr(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error never echoes a huge (or expanding) input."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[:limit]
        return repr(value) + f"... ({'chars' if isinstance(value, str) else 'bytes'} cut)"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def format_validation_error(exc: ValidationError, where: str = "config", max_errors: int = 5) -> str:
    parts = []
    errors = exc.errors()
    for err in errors[:max_errors]:
        loc_parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        loc = ".".join(p for i, p in enumerate(loc_parts)
                       if not (p in _UNION_TAGS and (i == 0 or loc_parts[i - 1] in ("model", "proxy"))))
        msg = err["msg"].removeprefix("Value error, ")
        if len(msg) > 300:
            msg = msg[:300] + "..."
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            family = err.get("input", {}).get("family") if isinstance(err.get("input"), dict) else None
            msg = f"unknown family {short_repr(family)} (allowed: {', '.join(sorted(_UNION_TAGS))})"
        got = err.get("input")
        if err["type"] not in ("extra_forbidden", "missing", "union_tag_invalid") and not isinstance(got, dict):
            msg += f" (got {short_repr(got)})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > max_errors:
        parts.append(f"and {len(errors) - max_errors} more")
    return f"{where}: " + "; ".join(parts)
