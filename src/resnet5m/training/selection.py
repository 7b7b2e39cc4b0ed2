"""Example selection by a proxy net's losses (``train.select``).

A small proxy network is trained first, with this package's own engine, for a few epochs on the same
data, augmentation and optimizer. Each training step then draws a candidate batch of
``ceil(batch_size / keep)`` images, the proxy scores them (per-example cross-entropy, no gradients),
and the model trains on the ``batch_size`` with the highest loss, in their original order.
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnet5m.data.cifar10 import Cifar10
from resnet5m.data.loader import Batch
from resnet5m.models.registry import build_model
from resnet5m.runtime.device import autocast, resolve_device
from resnet5m.runtime.distributed import Dist
from resnet5m.training.config import RunConfig, SelectConfig


def candidate_batch_size(batch_size: int, keep: float) -> int:
    """Images drawn per step so that ``batch_size`` of them are a ``keep`` share: ``ceil(batch_size / keep)``
    (a float quotient like 3 / 0.1 = 30.000000000000004 counts as 30)."""
    return max(batch_size, math.ceil(round(batch_size / keep, 9)))


def proxy_config(cfg: RunConfig) -> RunConfig:
    """The run the proxy trains: this run's data, augmentation, optimizer and schedule, with the proxy
    model for ``proxy_epochs`` epochs at full resolution, without selection, distillation or step logs."""
    sel = _select(cfg)
    train = cfg.train.model_copy(update={"epochs": sel.proxy_epochs, "select": None, "distill": None,
                                         "resolution_schedule": [], "early_stopping_patience": None,
                                         "log_steps": False})
    return cfg.model_copy(update={"model": sel.proxy, "train": train, "name": None, "sync_batchnorm": False,
                                  "compile": False})


def train_proxy(cfg: RunConfig, data: Cifar10) -> nn.Module:
    """Train ``cfg``'s proxy net (in one process, in a temporary folder that is removed) and return it in
    eval mode, frozen. Only training epochs run (no validation, no test set); the global random state
    is left as it was."""
    from resnet5m.training.trainer import Trainer  # trainer.py uses this module

    device = resolve_device(cfg.device)
    saved = random.getstate(), np.random.get_state()
    try:
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), \
                tempfile.TemporaryDirectory(prefix="resnet5m-proxy-") as tmp:
            proxy = Trainer(proxy_config(cfg), data, Path(tmp), out=lambda s: None, progress=False, dist=Dist())
            s = proxy.state
            while s.epoch < proxy.epochs and s.step < proxy.total_steps:
                proxy.train_epoch(s.epoch)
                proxy.schedule.epoch_end(None)  # no validation: a plateau schedule holds its lr
                s.epoch, s.batch = s.epoch + 1, 0
            model = proxy.eval_model()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return freeze(model)


def build_proxy(cfg: RunConfig, device: torch.device, state: dict[str, torch.Tensor]) -> nn.Module:
    """A trained proxy from its saved ``state_dict`` (a resumed run's checkpoint)."""
    model = build_model(_select(cfg).proxy).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(state)
    return freeze(model)


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def hardest(proxy: nn.Module, x: torch.Tensor, y: torch.Tensor, n_keep: int,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Positions (ascending) of the ``n_keep`` examples of ``(x, y)`` with the highest proxy cross-entropy."""
    with autocast(x.device, dtype):
        logits = proxy(x)
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    return torch.topk(losses, min(n_keep, len(y)), sorted=False).indices.sort().values


def select_hardest(proxy: nn.Module, batch: Batch, n_keep: int, dtype: torch.dtype = torch.float32) -> Batch:
    """The ``n_keep`` hardest examples of a candidate batch, in their original order (same batch number)."""
    x = batch.images
    idx = hardest(proxy, x, batch.labels, n_keep, dtype)
    kept = x[idx]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        kept = kept.contiguous(memory_format=torch.channels_last)
    return Batch(kept, batch.labels[idx], batch.indices[idx], batch.number)


def _select(cfg: RunConfig) -> SelectConfig:
    if cfg.train.select is None:
        raise ValueError("train.select is not set")
    return cfg.train.select
