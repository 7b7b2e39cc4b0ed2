"""``resnet5m recipes``: every recipe in configs/ with its parameters, what we measured and what its study reports."""

from __future__ import annotations

import argparse

from resnet5m.models import build_model, count_parameters
from resnet5m.training.config import RunConfig, build_config
from resnet5m.training.recipes import list_recipes, resolve_recipe


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the recipes (configs/) with params, measured and reported accuracy")
    p.set_defaults(func=run_recipes)


def measured_cell(cfg: RunConfig) -> str:
    m = cfg.measured
    if m is None:
        return "not measured"
    spread = f" ± {m.test_acc_std * 100:.2f}" if m.n > 1 else ""
    took = f"{m.train_time_s:.1f} s" if m.train_time_s < 120 else f"{m.train_time_s / 60:.1f} min"
    return f"{m.test_acc * 100:.2f}{spread}% (n={m.n}), {took}, {m.machine}, {m.date}"


def reported_cell(cfg: RunConfig) -> str:
    if cfg.reported is None:
        return "-"
    return " / ".join(f"{a * 100:.2f}%" for a in cfg.reported.test_acc)


def run_recipes(args: argparse.Namespace) -> int:
    rows = []
    for name in list_recipes():
        cfg = build_config(resolve_recipe(name))
        rows.append((name, f"{count_parameters(build_model(cfg.model)):,}", f"{cfg.train.epochs:g}",
                     measured_cell(cfg), reported_cell(cfg)))
    header = ("recipe", "params", "epochs", "measured by resnet5m (test, TTA)", "reported by the study")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print("\nmeasured: mean ± std over n fresh seeds, with the recipe's TTA; details and raw JSON in BENCHMARKS.md")
    return 0
