"""Parameter counting and the 5M trainable-parameter budget."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from resnet5m.errors import UserError

DEFAULT_BUDGET = 5_000_000
MAX_PARAMS = 100_000_000  # the most resnet5m builds, loads or summarises, even with --allow-over-budget


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_budget(model: nn.Module, budget: int = DEFAULT_BUDGET, allow_over: bool = False,
                 name: str = "model") -> int:
    """Return the trainable parameter count; raise if it exceeds ``budget`` unless ``allow_over``, or
    ``MAX_PARAMS`` in any case."""
    n = count_parameters(model)
    if n > MAX_PARAMS:
        raise UserError(f"{name} has {n:,} trainable parameters, over the hard limit of {MAX_PARAMS:,}; refused")
    if n > budget and not allow_over:
        raise UserError(f"{name} has {n:,} trainable parameters, over the budget of {budget:,}; "
                        "shrink it or pass --allow-over-budget (or --budget N)")
    return n


def check_budget_before_building(build: Callable[[], nn.Module], budget: int = DEFAULT_BUDGET,
                                 allow_over: bool = False, name: str = "model") -> int:
    """:func:`check_budget` of the model ``build`` makes, built on the meta device (no memory allocated), so
    an enormous configuration is refused before anything real is built."""
    with torch.device("meta"):
        model = build()
    return check_budget(model, budget, allow_over, name)
