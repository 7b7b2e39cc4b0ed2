"""Stratified split: proportions, determinism, disjointness, edge cases."""

from __future__ import annotations

import pytest
import torch

from resnet5m.data import stratified_split
from resnet5m.data.split import class_quotas
from resnet5m.errors import UserError


def imbalanced_labels():
    return torch.cat([torch.full((n,), c) for c, n in enumerate([500, 300, 150, 50])])[torch.randperm(1000)]


def test_quotas_sum_exactly_and_follow_proportions():
    assert class_quotas([500, 300, 150, 50], 100) == [50, 30, 15, 5]
    q = class_quotas([333, 333, 334], 100)
    assert sum(q) == 100 and max(q) - min(q) <= 1


def test_split_is_stratified_disjoint_and_complete():
    y = imbalanced_labels()
    tr, va = stratified_split(y, 100, seed=3)
    assert torch.bincount(y[va], minlength=4).tolist() == [50, 30, 15, 5]
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))


def test_split_is_deterministic_per_seed():
    y = imbalanced_labels()
    a = stratified_split(y, 100, seed=7)[1]
    b = stratified_split(y, 100, seed=7)[1]
    c = stratified_split(y, 100, seed=8)[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zero_validation_keeps_everything():
    tr, va = stratified_split(torch.arange(10) % 3, 0)
    assert tr.tolist() == list(range(10)) and va.numel() == 0


@pytest.mark.parametrize("size", [-1, 10, 11])
def test_out_of_range_sizes(size):
    with pytest.raises(UserError, match=f"val_size {size} is out of range; allowed 0..9"):
        stratified_split(torch.arange(10) % 2, size)
