"""Parameter counting and the 5M trainable-parameter budget."""

from __future__ import annotations

from torch import nn

from resnet5m.errors import UserError

DEFAULT_BUDGET = 5_000_000


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_budget(model: nn.Module, budget: int = DEFAULT_BUDGET, allow_over: bool = False,
                 name: str = "model") -> int:
    """Return the trainable parameter count; raise if it exceeds ``budget`` unless ``allow_over``."""
    n = count_parameters(model)
    if n > budget and not allow_over:
        raise UserError(f"{name} has {n:,} trainable parameters, over the budget of {budget:,}; "
                        "shrink it or pass --allow-over-budget (or --budget N)")
    return n
