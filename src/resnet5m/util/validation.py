"""Turn pydantic validation errors into one readable line."""

from __future__ import annotations

from pydantic import ValidationError

# Discriminated-union tags pydantic puts into error locations (e.g. ``resnet.blocks``): not user keys.
_UNION_TAGS = {"resnet", "fastnet"}


def format_validation_error(exc: ValidationError, where: str = "config") -> str:
    parts = []
    for err in exc.errors():
        loc_parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        loc = ".".join(p for i, p in enumerate(loc_parts)
                       if not (p in _UNION_TAGS and (i == 0 or loc_parts[i - 1] == "model")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown family {err.get('input', {}).get('family')!r} (allowed: resnet, fastnet)" \
                if isinstance(err.get("input"), dict) else msg
        got = err.get("input")
        if err["type"] not in ("extra_forbidden", "missing", "union_tag_invalid") and not isinstance(got, dict):
            msg += f" (got {got!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: " + "; ".join(parts)
