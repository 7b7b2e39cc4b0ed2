"""Loss functions, mixup/cutmix and weight averaging: the arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resnet5m.training.config import EMAConfig, MixConfig
from resnet5m.training.ema import WeightAverage
from resnet5m.training.losses import classification_loss, distillation_loss
from resnet5m.training.mixing import cutmix, mix_batch


def test_label_smoothing_value():
    logits = torch.zeros(1, 10)
    assert classification_loss(logits, torch.tensor([3]), 0.2).item() == pytest.approx(math.log(10))
    logits = torch.tensor([[10.0] + [0.0] * 9])
    plain = classification_loss(logits, torch.tensor([0]))
    smooth = classification_loss(logits, torch.tensor([0]), 0.2)
    assert smooth > plain  # smoothing penalises over-confidence


def test_soft_targets_equal_hard_targets_when_one_hot():
    logits = torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    soft = torch.nn.functional.one_hot(y, 10).float()
    assert torch.allclose(classification_loss(logits, soft), classification_loss(logits, y))


def test_distillation():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert distillation_loss(logits, logits, y, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    ce = classification_loss(logits, y)
    assert distillation_loss(logits, torch.randn(8, 10), y, 4.0, 0.0).item() == pytest.approx(ce.item())
    assert distillation_loss(logits, torch.randn(8, 10), y, 4.0, 1.0).item() > 0


def test_mixup_targets_are_convex_and_match_images():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    y = torch.randint(0, 10, (16,))
    xm, t = mix_batch(x, y, 10, MixConfig(alpha=1.0), None, gen)
    assert t.shape == (16, 10) and torch.allclose(t.sum(1), torch.ones(16))
    lam = t[torch.arange(16), y].min().item()
    assert 0 <= lam <= 1 and not torch.equal(xm, x)
    same = mix_batch(x, y, 10, MixConfig(alpha=1.0, p=0.0), None, gen)
    assert torch.equal(same[0], x) and torch.equal(same[1], y)


def test_cutmix_box_area_matches_lambda_and_comes_from_the_partner():
    gen = torch.Generator().manual_seed(1)
    perm = torch.tensor([1, 2, 3, 0])
    x = (torch.arange(4).float().view(4, 1, 1, 1) + 1).expand(4, 3, 32, 32).contiguous()  # image i is all i+1
    out, lam = cutmix(x, 0.75, perm, gen)
    box = (out != x).all(1)
    assert torch.allclose(box.float().mean((1, 2)), torch.full((4,), 1 - lam)) and 0 < lam < 1
    for i in range(4):  # the box holds the partner image's pixels, the rest the image's own
        assert torch.all(out[i][:, box[i]] == perm[i] + 1) and torch.all(out[i][:, ~box[i]] == i + 1)


def test_ema_math():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = WeightAverage(lin, EMAConfig(decay=0.5, every_n_steps=1), total_steps=10, steps_per_epoch=10)
    avg.update(lin, 1)  # snapshot: 0
    for v in (1.0, 2.0):
        with torch.no_grad():
            lin.weight.fill_(v)
        avg.update(lin, 2)
    # 0 -> 0.5*0 + 0.5*1 = 0.5 -> 0.5*0.5 + 0.5*2 = 1.25
    assert avg.model_for_eval(lin).weight.item() == pytest.approx(1.25)
    assert lin.weight.item() == 2.0  # plain EMA leaves the model alone


def test_lookahead_copies_back_and_decay_warmup():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    cfg = EMAConfig(decay=0.9, every_n_steps=2, decay_power=3.0, lookahead=True)
    avg = WeightAverage(lin, cfg, total_steps=100, steps_per_epoch=10)
    assert avg.decay_at(50) == pytest.approx(0.81 * 0.125)
    avg.update(lin, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    avg.update(lin, 3)  # not a multiple of every_n_steps: ignored
    assert lin.weight.item() == 1.0
    avg.update(lin, 50)
    d = 0.81 * 0.125
    assert lin.weight.item() == pytest.approx(d * 0.0 + (1 - d) * 1.0)
    assert avg.model_for_eval(lin) is lin
