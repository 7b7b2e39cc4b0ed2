"""Reading YAML that a user hands us: bounded size, UTF-8 only, no alias bombs, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from resnet5m.errors import UserError

MAX_BYTES = 1 << 20  # a config is a few KiB; anything past 1 MiB is not one
MAX_NODES = 100_000  # nodes after expanding aliases ("billion laughs" expands to ~1e9)


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    key = id(node)
    if key not in memo:
        memo[key] = limit + 1  # a node reached again while being sized: a recursive alias
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += _expanded_size(child, memo, limit)
            if total > limit:
                break
        memo[key] = total
    return memo[key]


def parse_yaml(text: str, where: str, *, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load`` that refuses documents expanding past ``max_nodes`` nodes."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}, max_nodes) > max_nodes:
            raise UserError(f"{where}: expands to more than {max_nodes:,} values (YAML aliases?); refused")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: invalid YAML ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None


def read_yaml(path: str | Path, *, what: str = "config file", max_bytes: int = MAX_BYTES) -> Any:
    """Parse the YAML file at ``path``; a missing, huge, non-UTF-8 or malformed file is a one-line error."""
    p = Path(path)
    try:
        if not p.is_file():
            raise UserError(f"{path}: no such {what}")
        if p.stat().st_size > max_bytes:
            raise UserError(f"{path}: {p.stat().st_size:,} bytes; a {what} must be under {max_bytes:,}")
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    return parse_yaml(text, str(path))
