"""The ``fastnet`` family: a residual network built for time-to-accuracy (airbench lineage).

Per group: conv3x3 -> maxpool2 -> BN -> act (``x0``), then a branch of 1 or 2 more convs, added to a
shortcut, then act. The shortcut (``skip``) is
- ``projection`` (the default, the ``fast`` preset): 1x1-conv + BN from the pooled group input,
  ``act(BN(conv(x0)) + BN(conv1x1(pool(x))))``;
- ``identity``: ``act(x0 + branch(x0))`` (with 3 convs per group this is airbench96's residual);
- ``none``: a plain, non-residual group (airbench94's, for ablations and the race).
Tricks, each one switchable in the config:
- a frozen 2x2 patch-whitening first layer initialised from the data's patch covariance,
- identity (dirac) initialisation of the 3x3 convs,
- BatchNorm with frozen scale (only the bias learns) and low running-stat momentum,
- a linear head on global max-pooled features, its logits scaled by ``head_scale``.
The defaults are the ``fast`` preset.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from resnet5m.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, NUM_CLASSES
from resnet5m.models.layers import Normalize, make_activation
from resnet5m.util.validation import StrictModel


class FastNetConfig(StrictModel):
    family: Literal["fastnet"] = "fastnet"
    widths: list[int] = Field([64, 256, 256], min_length=1, max_length=6)
    convs_per_group: Literal[2, 3] = 2
    skip: Literal["identity", "projection", "none"] = Field(
        "projection", description="projection: 1x1-conv+BN shortcut from the group input; identity: "
                                  "x0 + branch(x0) inside each group (after its pooling conv); none: plain")
    whiten_kernel: int = Field(2, ge=1, le=4, description="patch size of the whitening layer")
    whiten: bool = True
    activation: Literal["relu", "gelu", "silu"] = "gelu"
    bn_momentum: float = Field(0.6, ge=0.0, lt=1.0, description="share of old running stats kept per step")
    bn_frozen_scale: bool = True
    dirac_init: bool = True
    head_scale: float = Field(1 / 256, gt=0, description="logits = head(features) * head_scale")
    head_init_std: float | None = Field(1.0, gt=0, description="re-scale head weights to this std (null: "
                                                               "torch's default init)")
    whiten_bias_epochs: int | None = Field(3, ge=0, description="train the whitening bias this many epochs, "
                                                                "then freeze it (null = always train)")
    num_classes: int = Field(NUM_CLASSES, ge=2)
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    @model_validator(mode="after")
    def _check(self) -> FastNetConfig:
        if any(w < 1 or w > 2048 for w in self.widths):
            raise ValueError(f"widths must be 1..2048, got {self.widths}")
        return self


class FrozenScaleBN(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (not trained): only the bias learns."""

    def __init__(self, channels: int, momentum: float, frozen_scale: bool) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad = not frozen_scale


def _conv(cin: int, cout: int, dirac: bool) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    if dirac:  # identity init: the first min(cin, cout) filters pass their input channel through
        with torch.no_grad():
            w = conv.weight
            nn.init.dirac_(w[: min(cin, cout)])
    return conv


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool -> BN -> act (x0), then the branch [conv-BN(-act-conv-BN)] and the skip."""

    def __init__(self, cin: int, cout: int, cfg: FastNetConfig) -> None:
        super().__init__()
        bn = lambda c: FrozenScaleBN(c, cfg.bn_momentum, cfg.bn_frozen_scale)  # noqa: E731
        self.conv1, self.norm1 = _conv(cin, cout, cfg.dirac_init), bn(cout)
        self.conv2, self.norm2 = _conv(cout, cout, cfg.dirac_init), bn(cout)
        self.conv3 = _conv(cout, cout, cfg.dirac_init) if cfg.convs_per_group == 3 else None
        self.norm3 = bn(cout) if cfg.convs_per_group == 3 else None
        self.act = make_activation(cfg.activation)
        self.skip = cfg.skip
        if cfg.skip == "projection":
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.act(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        y = self.norm2(self.conv2(x0))
        if self.conv3 is not None:
            y = self.norm3(self.conv3(self.act(y)))
        if self.skip == "identity":
            y = y + x0
        elif self.skip == "projection":
            y = y + self.shortcut(F.max_pool2d(x, 2))
        return self.act(y)


class FastNet(nn.Module):
    def __init__(self, cfg: FastNetConfig) -> None:
        super().__init__()
        self.config = cfg
        self.normalize = Normalize(cfg.mean, cfg.std)
        k = cfg.whiten_kernel
        width0 = 2 * 3 * k * k
        self.whiten = nn.Conv2d(3, width0, k, padding=0, bias=True)
        nn.init.zeros_(self.whiten.bias)
        self.whiten.weight.requires_grad = not cfg.whiten
        self.act = make_activation(cfg.activation)
        groups, cin = [], width0
        for w in cfg.widths:
            groups.append(ConvGroup(cin, w, cfg))
            cin = w
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(cin, cfg.num_classes, bias=False)
        if cfg.head_init_std is not None:
            with torch.no_grad():
                self.head.weight.mul_(cfg.head_init_std / self.head.weight.std())

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the covariance of k x k patches of ``images`` (in [0, 1]):
        each eigenvector scaled by 1/sqrt(eigenvalue), in +/- pairs (so the GELU keeps both signs)."""
        if not self.config.whiten:
            return
        x = self.normalize(images.float())
        c, (h, w) = x.shape[1], self.whiten.weight.shape[2:]
        patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w).double()
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        eigval, eigvec = eigval.flip(0), eigvec.T.flip(0)
        filters = (eigvec / torch.sqrt(eigval + eps)[:, None]).reshape(-1, c, h, w)
        self.whiten.weight.copy_(torch.cat((filters, -filters)).to(self.whiten.weight))

    def on_epoch_start(self, epoch: int) -> None:
        """Freeze the whitening layer's bias after ``whiten_bias_epochs`` epochs (airbench)."""
        n = self.config.whiten_bias_epochs
        self.whiten.bias.requires_grad = n is None or epoch < n

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(self.normalize(x))))
        return F.adaptive_max_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.config.head_scale
