"""The benchmark scripts' recipe overrides stay valid as the config schema evolves."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from resnet5m.training.config import build_config
from resnet5m.training.recipes import resolve_recipe

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ablations():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("ablations")
    finally:
        sys.path.remove(str(BENCH))


def test_every_ablation_builds_and_changes_the_recipe(ablations) -> None:
    common = ablations.PROTOCOL + ablations.LENGTH
    base = build_config(resolve_recipe("fast"), common).model_dump()
    assert base["data"]["val_size"] == 5000 and base["eval"]["tta"] == "none"  # scored on validation only
    seen = []
    for name, (_, overrides) in ablations.VARIANTS.items():
        cfg = build_config(resolve_recipe("fast"), common + overrides).model_dump()
        if name == "baseline":
            assert cfg == base
        else:
            assert cfg != base, name
            assert cfg not in seen, f"{name} duplicates another variant"
        seen.append(cfg)


def test_sgd_ablation_keeps_the_recipe_bias_and_head_lr(ablations) -> None:
    fast = build_config(resolve_recipe("fast"), ablations.LENGTH).optimizer
    sgd = build_config(resolve_recipe("fast"), ablations.LENGTH + ablations.VARIANTS["sgd_not_muon"][1]).optimizer
    assert sgd.name == "sgd" and sgd.nesterov
    assert sgd.lr * sgd.bias_lr_scale == pytest.approx(fast.lr, rel=1e-3)
    assert sgd.lr * sgd.head_lr_scale == pytest.approx(fast.lr * fast.head_lr_scale, rel=1e-3)


def test_recipes_listing_shows_what_was_measured_where(capsys):
    """`resnet5m recipes`: a measured recipe shows its mean, n, time (seconds under two minutes) and
    machine; an unmeasured one says so; a reference shows what its study reports."""
    from resnet5m.cli.main import main

    assert main(["recipes"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    max_cfg = build_config(resolve_recipe("max"), [])
    assert max_cfg.measured is not None and max_cfg.measured.train_time_s < 120
    m = max_cfg.measured
    assert f"{m.test_acc * 100:.2f}" in rows["max"] and f"(n={m.n})" in rows["max"] and m.n >= 3
    assert f"{m.train_time_s:.1f} s" in rows["max"] and "NVIDIA H" in rows["max"] and m.date in rows["max"]
    assert "min" in rows["fast"] and "AMD EPYC" in rows["fast"]  # the CPU race: 1037 s shown in minutes
    assert "not measured" in rows["reddy2024"] and "92.89%" in rows["reddy2024"]


def test_fast32_preset_is_the_gpu_plans_g() -> None:
    """`fast32` (G, chosen on validation) is `fast` plus the override the gpu_suite ladder-2 plan runs:
    one config under two names, so a result of either is a result of both."""
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_suite import FAST_32PX
    finally:
        sys.path.remove(str(BENCH))
    from resnet5m.training.config import RECIPE_METADATA

    def recipe(name: str, overrides: tuple[str, ...] = ()) -> dict:
        cfg = build_config(resolve_recipe(name), list(overrides)).model_dump()
        return {k: v for k, v in cfg.items() if k not in RECIPE_METADATA}  # how to train, not what it measured

    assert recipe("fast32")["train"]["resolution_schedule"] == [] and recipe("fast")["train"]["resolution_schedule"]
    assert recipe("fast32") == recipe("fast", FAST_32PX)
