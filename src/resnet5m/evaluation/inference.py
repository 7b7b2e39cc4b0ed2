"""Batched inference on uint8 images, with test-time augmentation (TTA).

TTA views and weights (airbench's scheme):
- ``flip``: mean of the logits of the image and its mirror;
- ``flip_translate``: 0.5 x flip(image) + 0.25 x flip(shifted 1px up-left) + 0.25 x flip(shifted 1px
  down-right), shifts with reflect padding: six views per image.
Outputs keep the input order exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnet5m.runtime.device import autocast
from resnet5m.runtime.distributed import SINGLE, Dist

TTA_MODES = ("none", "flip", "flip_translate")


def _mirror(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * model(x).float() + 0.5 * model(x.flip(-1)).float()


def _views(model: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    if tta == "none":
        return model(x).float()
    if tta == "flip":
        return _mirror(model, x)
    if tta == "flip_translate":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left = padded[:, :, 0:h, 0:w].contiguous(memory_format=torch.channels_last)
        down_right = padded[:, :, 2:h + 2, 2:w + 2].contiguous(memory_format=torch.channels_last)
        return 0.5 * _mirror(model, x) + 0.25 * _mirror(model, up_left) + 0.25 * _mirror(model, down_right)
    raise ValueError(f"unknown TTA mode {tta!r}; allowed: {', '.join(TTA_MODES)}")


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 1000, tta: str = "none",
                   device: torch.device | str | None = None, channels_last: bool = True,
                   dtype: torch.dtype = torch.float32, dist: Dist = SINGLE) -> torch.Tensor:
    """Logits (float32, on CPU) for ``images``: uint8 (N, 3, H, W) or float in [0, 1]; ``dtype`` is the
    autocast precision (the run's training precision). With several processes each predicts its shard
    of the images and every process gets all the logits, in order."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; allowed: {', '.join(TTA_MODES)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for chunk in images[dist.shard(len(images))].split(batch_size):
            x = chunk.to(device, non_blocking=True)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                out.append(_views(model, x, tta).float().cpu())
    finally:
        model.train(was_training)
    return dist.gather_rows(torch.cat(out) if out else torch.empty(0, 10))
