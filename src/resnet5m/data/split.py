"""Seeded, stratified train/validation split: model selection never touches the test set."""

from __future__ import annotations

import torch

from resnet5m.errors import UserError


def class_quotas(counts: list[int], total: int) -> list[int]:
    """Split ``total`` over classes in proportion to ``counts`` (largest-remainder rounding)."""
    n = sum(counts)
    exact = [total * c / n for c in counts]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas


def stratified_split(labels: torch.Tensor, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sorted (train_indices, val_indices) with each class's share preserved in the validation set.

    The same ``labels``, ``val_size`` and ``seed`` always give the same split.
    """
    n = len(labels)
    if not 0 <= val_size < n:
        raise UserError(f"val_size {val_size} is out of range; allowed 0..{n - 1} for {n} training images")
    if val_size == 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    labels = labels.cpu()
    classes = torch.unique(labels).tolist()
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    quotas = class_quotas([len(m) for m in members], val_size)
    gen = torch.Generator().manual_seed(seed)
    val_parts = [m[torch.randperm(len(m), generator=gen)[:q]] for m, q in zip(members, quotas)]
    val = torch.sort(torch.cat(val_parts)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val
