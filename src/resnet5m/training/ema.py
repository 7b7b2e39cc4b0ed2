"""Exponential moving average of the weights (and BN statistics), optionally Lookahead-style.

``decay_power > 0`` reproduces airbench's warm-up of the average: the effective decay per update
is ``decay ** every_n_steps * progress ** decay_power``, so the average moves fast early and
averages strongly at the end. With ``lookahead`` the average is copied back into the model after
every update (the model trains from the averaged point); otherwise it is a separate copy used for
evaluation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from resnet5m.training.config import EMAConfig


class WeightAverage:
    def __init__(self, model: nn.Module, cfg: EMAConfig, total_steps: int, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        self.start_step = int(round(cfg.start_epoch * steps_per_epoch))
        self.average: dict[str, torch.Tensor] | None = None
        self.eval_model: nn.Module | None = None if cfg.lookahead else copy.deepcopy(model).eval()
        self.updates = 0

    def decay_at(self, step: int) -> float:
        d = self.cfg.decay ** self.cfg.every_n_steps
        if self.cfg.decay_power > 0:
            d *= (step / max(1, self.total_steps)) ** self.cfg.decay_power
        return d

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based count of steps taken so far)."""
        if step < self.start_step or step % self.cfg.every_n_steps != 0:
            return
        state = model.state_dict()
        if self.average is None:  # the first update only takes a snapshot
            self.average = {k: v.detach().clone() for k, v in state.items() if v.dtype.is_floating_point}
        else:
            d = self.decay_at(step)
            for k, avg in self.average.items():
                avg.lerp_(state[k], 1 - d)
        self.updates += 1
        if self.cfg.lookahead:
            self.copy_into(model)

    @torch.no_grad()
    def copy_into(self, model: nn.Module) -> None:
        if self.average is None:
            return
        state = model.state_dict()
        for k, avg in self.average.items():
            state[k].copy_(avg)

    def model_for_eval(self, model: nn.Module) -> nn.Module:
        """The network to evaluate: the averaged copy (or the model itself for lookahead/no average yet)."""
        if self.cfg.lookahead or self.average is None or self.eval_model is None:
            return model
        self.copy_into(self.eval_model)
        # keep non-float buffers (e.g. BN num_batches_tracked) in step with the live model
        live = model.state_dict()
        for k, v in self.eval_model.state_dict().items():
            if not v.dtype.is_floating_point:
                v.copy_(live[k])
        return self.eval_model.eval()

    def state_dict(self) -> dict:
        return {"average": self.average, "updates": self.updates}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        average = state["average"]
        self.average = {k: v.to(device) for k, v in average.items()} if average else None
        self.updates = int(state["updates"])
