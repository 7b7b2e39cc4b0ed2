"""The real CIFAR-10 from ../shared: counts, labels, statistics, split."""

from __future__ import annotations

import torch

from resnet5m.data import CIFAR10_MEAN, CIFAR10_STD, stratified_split


def test_counts_and_dtypes(cifar):
    assert cifar.train_images.shape == (50000, 3, 32, 32)
    assert cifar.test_images.shape == (10000, 3, 32, 32)
    assert cifar.train_images.dtype == torch.uint8 and cifar.train_labels.dtype == torch.int64
    assert torch.bincount(cifar.train_labels).tolist() == [5000] * 10
    assert torch.bincount(cifar.test_labels).tolist() == [1000] * 10


def test_official_order_first_labels(cifar):
    assert cifar.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert cifar.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_per_channel_statistics_match_published(cifar):
    x = cifar.train_images.double() / 255
    mean = x.mean((0, 2, 3))
    std = x.std((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN, dtype=torch.double), atol=1e-4)
    assert torch.allclose(std, torch.tensor(CIFAR10_STD, dtype=torch.double), atol=1e-4)


def test_default_split_is_stratified_on_real_labels(cifar):
    train_idx, val_idx = stratified_split(cifar.train_labels, 5000, seed=0)
    assert len(val_idx) == 5000 and len(train_idx) == 45000
    assert torch.bincount(cifar.train_labels[val_idx]).tolist() == [500] * 10
    assert torch.bincount(cifar.train_labels[train_idx]).tolist() == [4500] * 10
