"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch, with soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resnet5m.training.config import MixConfig


def _beta(alpha: float, gen: torch.Generator) -> float:
    # Beta(a, a) from two Gamma draws, using the batch's generator so runs stay reproducible.
    g1 = torch._standard_gamma(torch.tensor([alpha], dtype=torch.float64), generator=gen)
    g2 = torch._standard_gamma(torch.tensor([alpha], dtype=torch.float64), generator=gen)
    return float(g1 / (g1 + g2))


def mixup(x: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, float]:
    return lam * x + (1 - lam) * x[perm], lam


def cutmix(x: torch.Tensor, lam: float, perm: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """Paste a box of area ~(1 - lam) from the shuffled batch; lam is corrected to the exact box area."""
    _, _, h, w = x.shape
    cut = (1 - lam) ** 0.5
    bh, bw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=gen))
    cx = int(torch.randint(0, w, (1,), generator=gen))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_cfg: MixConfig | None,
              cutmix_cfg: MixConfig | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images, targets); targets are soft (N, C) when the batch was mixed, else class indices.

    With both enabled, each batch picks one of the two at random. ``gen`` is a CPU generator.
    """
    choices = [c for c in (("mixup", mixup_cfg), ("cutmix", cutmix_cfg)) if c[1] is not None]
    if not choices:
        return x, y
    kind, cfg = choices[int(torch.randint(0, len(choices), (1,), generator=gen))]
    if float(torch.rand(1, generator=gen)) >= cfg.p:
        return x, y
    lam = _beta(cfg.alpha, gen)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    x, lam = mixup(x, lam, perm) if kind == "mixup" else cutmix(x, lam, perm, gen)
    one_hot = F.one_hot(y, num_classes).float()
    return x, lam * one_hot + (1 - lam) * one_hot[perm]
