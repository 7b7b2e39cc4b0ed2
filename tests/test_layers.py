"""The package's folders form layers: a module imports only from its own layer or the ones below
(training never imports reporting; the run directory and file formats sit below both)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "resnet5m"
LAYERS = ["errors", "util", "io", "runtime", "data", "models", "evaluation", "training", "reporting", "search",
          "cli"]


def imported_layers(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        out |= {n.split(".")[1] for n in names if n.startswith("resnet5m.") and n.count(".") >= 1}
    return out


def test_no_import_runs_upwards():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        layer = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem == "errors" else None
        if layer is None:
            continue  # resnet5m/__init__.py
        assert layer in LAYERS, f"{rel}: folder {layer!r} is not in LAYERS"
        for used in imported_layers(path):
            if used in LAYERS and LAYERS.index(used) > LAYERS.index(layer):
                bad.append(f"{rel} imports resnet5m.{used}")
    assert not bad, bad
