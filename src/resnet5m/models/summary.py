"""Model summaries via torchinfo: layer table, parameters, multiply-adds per image, memory estimate."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn
from torchinfo import summary as torchinfo_summary

from resnet5m.models.budget import DEFAULT_BUDGET, count_parameters


@dataclass(frozen=True)
class ModelSummary:
    table: str
    total_params: int
    trainable_params: int
    mult_adds: int  # per 32x32 image, forward pass
    budget: int

    @property
    def within_budget(self) -> bool:
        return self.trainable_params <= self.budget

    def text(self) -> str:
        verdict = "within budget" if self.within_budget else "OVER BUDGET"
        return (f"{self.table}\n"
                f"total params:         {self.total_params:,}\n"
                f"trainable params:     {self.trainable_params:,} ({verdict}: {self.budget:,})\n"
                f"mult-adds per image:  {self.mult_adds / 1e6:,.1f} M\n")


def mult_adds_per_image(model: nn.Module, size: int = 32) -> int:
    """Forward multiply-adds for one ``size`` x ``size`` image."""
    stats = torchinfo_summary(model, input_size=(1, 3, size, size), verbose=0, device="cpu", mode="eval")
    return int(stats.total_mult_adds)


def summarize(model: nn.Module, budget: int = DEFAULT_BUDGET, depth: int = 3) -> ModelSummary:
    was_training = model.training
    stats = torchinfo_summary(
        model, input_size=(1, 3, 32, 32), verbose=0, device="cpu", depth=depth, mode="eval",
        col_names=("kernel_size", "output_size", "num_params", "mult_adds"), row_settings=("var_names",))
    model.train(was_training)
    table = re.sub(r"\(Units\.(\w)\w*\)", r"(\1)", str(stats))  # torchinfo prints "(Units.MEGABYTES)" for millions
    return ModelSummary(table, count_parameters(model, trainable_only=False), count_parameters(model),
                        int(stats.total_mult_adds), budget)


__all__ = ["ModelSummary", "mult_adds_per_image", "summarize"]
