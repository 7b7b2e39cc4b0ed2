"""``resnet5m presets`` and ``resnet5m summary``."""

from __future__ import annotations

import argparse

from resnet5m.cli.common import add_model_arguments, model_overrides, positive_int, require_model_spec
from resnet5m.models import PRESETS, build_model, count_parameters, resolve_model_config
from resnet5m.models.budget import DEFAULT_BUDGET, MAX_PARAMS, check_budget_before_building
from resnet5m.models.summary import summarize
from resnet5m.training.recipes import list_recipes, resolve_recipe


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list model presets with parameter counts")
    p.add_argument("--budget", type=positive_int, default=DEFAULT_BUDGET)
    p.set_defaults(func=run_presets)

    p = sub.add_parser("summary", help="layer table, parameters, mult-adds and memory of a model")
    p.add_argument("model", nargs="?", help="preset name, recipe name (e.g. strong: its model) or YAML file (model "
                                            "or run config)")
    p.add_argument("--depth", type=int, default=3, help="nesting depth of the layer table")
    add_model_arguments(p)
    p.set_defaults(func=run_summary)


def run_presets(args: argparse.Namespace) -> int:
    rows = []
    for name, preset in PRESETS.items():
        n = count_parameters(build_model(preset.config))
        rows.append((name, f"{n:,}", "yes" if n <= args.budget else "NO", preset.description))
    widths = [max(len(r[i]) for r in rows + [("preset", "params", "fits", "description")]) for i in range(4)]
    header = ("preset", "params", "fits", "description")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]), r[3]]))
    print(f"\nbudget: {args.budget:,} trainable parameters")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    overrides = model_overrides(args)
    spec = args.model
    if spec and spec not in PRESETS and spec in list_recipes():  # a recipe's name: the model it trains
        spec = resolve_recipe(spec)
    cfg = resolve_model_config(require_model_spec(spec, overrides), overrides)
    # sized on the meta device first: only the hard limit refuses here (an over-budget model is summarised)
    check_budget_before_building(lambda: build_model(cfg), MAX_PARAMS, allow_over=False, name=f"model ({cfg.family})")
    s = summarize(build_model(cfg), budget=args.budget, depth=args.depth)
    print(s.text())
    if not s.within_budget and not args.allow_over_budget:
        print(f"over budget: {s.trainable_params:,} > {s.budget:,} trainable parameters")
        return 1
    return 0
