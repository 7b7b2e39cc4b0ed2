"""Optimizers and schedules do what the config says."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resnet5m.training.config import OptimizerConfig, ScheduleConfig
from resnet5m.training.optim import (
    _zeropower_newton_schulz,
    build_optimizers,
    decoupled_sgd_hparams,
    set_lr_factor,
)
from resnet5m.training.schedule import Schedule, base_factor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adadelta", "adagrad", "rmsprop", "muon"])
def test_every_optimizer_takes_a_step(name):
    torch.manual_seed(0)
    model = Tiny()
    cfg = OptimizerConfig(name=name, lr=0.01, weight_decay=1e-4)
    opts = build_optimizers(model, cfg, batch_size=8)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.rand(8, 3, 8, 8)), torch.randint(0, 2, (8,)))
    loss.backward()
    for o in opts:
        o.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(changed), f"{name} left some parameters unchanged"
    kinds = {type(o).__name__ for o in opts}
    expected = {"sgd": {"SGD"}, "adam": {"Adam"}, "adamw": {"AdamW"}, "adadelta": {"Adadelta"},
                "adagrad": {"Adagrad"}, "rmsprop": {"RMSprop"}, "muon": {"SGD", "Muon"}}[name]
    assert kinds == expected


def test_rmsprop_momentum_defaults_to_torch_default_unless_given():
    (opt,) = build_optimizers(Tiny(), OptimizerConfig(name="rmsprop", lr=0.01), batch_size=8)
    assert opt.param_groups[0]["momentum"] == 0.0
    (opt,) = build_optimizers(Tiny(), OptimizerConfig(name="rmsprop", lr=0.01, momentum=0.5), batch_size=8)
    assert opt.param_groups[0]["momentum"] == 0.5
    assert OptimizerConfig(name="sgd").momentum == 0.9


def test_param_groups_bias_lr_and_no_decay():
    model = Tiny()
    cfg = OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.01, bias_lr_scale=10, no_decay_bn_bias=True,
                          head_lr_scale=2)
    (opt,) = build_optimizers(model, cfg, batch_size=8)
    by_lr = {round(g["lr"], 6): g for g in opt.param_groups}
    assert set(by_lr) == {0.1, 1.0, 0.2}
    assert by_lr[1.0]["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in by_lr[1.0]["params"])
    assert by_lr[0.2]["params"] == [model.head.weight]
    assert by_lr[0.1]["weight_decay"] == 0.01


def test_decoupled_hyperparameters_scale_with_batch_size():
    lr1, wd1 = decoupled_sgd_hparams(11.5, 0.0153, 0.85, 512)
    lr2, wd2 = decoupled_sgd_hparams(11.5, 0.0153, 0.85, 1024)
    assert math.isclose(lr2, 2 * lr1)  # linear scaling of the torch lr with the batch size
    steps1, steps2 = 50000 / 512, 50000 / 1024
    assert math.isclose(lr1 * wd1 * steps1, lr2 * wd2 * steps2)  # same decay per epoch
    # momentum is decoupled too: higher momentum -> proportionally smaller torch lr
    lr_m, _ = decoupled_sgd_hparams(11.5, 0.0153, 0.9, 1024)
    assert math.isclose(lr_m * (1 + 1 / (1 - 0.9)), lr2 * (1 + 1 / (1 - 0.85)))
    # with a group lr scale, decoupled decay per step stays the same
    model = Tiny()
    (opt,) = build_optimizers(model, OptimizerConfig(lr=11.5, weight_decay=0.0153, momentum=0.85, nesterov=True,
                                                     decoupled=True, bias_lr_scale=64), 1024)
    prods = {round(g["lr"] * g["weight_decay"], 12) for g in opt.param_groups}
    assert len(prods) == 1


def test_newton_schulz_orthogonalises():
    g = torch.randn(64, 288)
    x = _zeropower_newton_schulz(g, steps=5)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.5  # all singular values pushed near 1


def test_set_lr_factor():
    model = Tiny()
    (opt,) = build_optimizers(model, OptimizerConfig(lr=0.1, bias_lr_scale=2), 8)
    set_lr_factor([opt], 0.5)
    assert sorted(round(g["lr"], 6) for g in opt.param_groups) == [0.05, 0.05, 0.1]  # weights, head, bias
    set_lr_factor([opt], 1.0)
    assert sorted(round(g["lr"], 6) for g in opt.param_groups) == [0.1, 0.1, 0.2]


def lrs(cfg: ScheduleConfig, total=100, spe=10):
    sched = Schedule(cfg, total, spe)
    return [sched.factor(s) for s in range(total)]


def test_constant_and_warmup():
    f = lrs(ScheduleConfig(name="constant", warmup_epochs=2, warmup_start=0.1))
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(0.55) and f[20:] == [1.0] * 80


def test_step_and_multistep():
    f = lrs(ScheduleConfig(name="step", step_size=3, gamma=0.5))
    assert f[29] == 1.0 and f[30] == 0.5 and f[60] == 0.25
    f = lrs(ScheduleConfig(name="multistep", milestones=[2, 7], gamma=0.1))
    assert f[19] == 1.0 and f[20] == pytest.approx(0.1) and f[70] == pytest.approx(0.01)


def test_cosine_with_floor_and_warmup():
    f = lrs(ScheduleConfig(name="cosine", min_factor=0.1))
    assert f[0] == 1.0 and f[50] == pytest.approx(0.55) and f[99] == pytest.approx(0.1, abs=1e-3)
    f = lrs(ScheduleConfig(name="cosine", warmup_epochs=2))
    assert f[0] == 0.0 and f[10] == pytest.approx(0.5) and f[20] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.5)  # halfway through the post-warm-up span


def test_cosine_restarts():
    f = lrs(ScheduleConfig(name="cosine_restarts", restart_epochs=2, restart_mult=2), total=140)
    assert f[0] == 1.0 and f[19] < 0.05 and f[20] == 1.0  # restart after 2 epochs
    assert f[59] < 0.05 and f[60] == 1.0  # next cycle is 4 epochs long


def test_onecycle_and_linear():
    f = lrs(ScheduleConfig(name="onecycle", peak_fraction=0.3, start_factor=0.04, final_factor=0.0))
    assert f[0] == pytest.approx(0.04) and f[30] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert f[99] < 0.01
    f = lrs(ScheduleConfig(name="linear", start_factor=0.2, peak_fraction=0.23, final_factor=0.07), total=100)
    assert f[0] == pytest.approx(0.2) and f[23] == pytest.approx(1.0)
    assert base_factor(ScheduleConfig(name="linear", start_factor=0.2, peak_fraction=0.23, final_factor=0.07),
                       100, 100, 10) == pytest.approx(0.07)


def test_plateau_reduces_after_patience_on_validation_metric():
    s = Schedule(ScheduleConfig(name="plateau", patience=2, factor=0.5), 100, 10)
    for acc in [0.5, 0.6, 0.6, 0.6]:
        s.epoch_end(acc)
    assert s.factor(0) == 1.0  # two bad epochs = patience, not yet beyond it
    s.epoch_end(0.59)
    assert s.factor(0) == 0.5
    state = s.state_dict()
    s2 = Schedule(ScheduleConfig(name="plateau", patience=2, factor=0.5), 100, 10)
    s2.load_state_dict(state)
    assert s2.factor(5) == 0.5 and s2.plateau.best == 0.6
