"""The configurable CIFAR ResNet family (BasicBlock units), covering the reference studies' design space."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from resnet5m.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, NUM_CLASSES
from resnet5m.errors import UserError
from resnet5m.models.layers import Normalize, SqueezeExcite, make_activation
from resnet5m.util.validation import StrictModel


class ResNetConfig(StrictModel):
    """N stages; stage i has B_i BasicBlocks of C_i channels, conv kernel F_i, skip kernel K_i, stride S_i."""

    family: Literal["resnet"] = "resnet"
    blocks: list[int] = Field(..., min_length=1, max_length=8, description="B_i: blocks per stage")
    channels: list[int] = Field(..., min_length=1, max_length=8, description="C_i: channels per stage")
    kernels: list[int] | None = Field(None, description="F_i: conv kernel per stage (default 3)")
    skip_kernels: list[int] | None = Field(None, description="K_i: shortcut conv kernel (default 1)")
    strides: list[int] | None = Field(None, description="stride per stage (default 1, then 2)")
    stem_channels: int | None = Field(None, ge=1, le=1024, description="default: C_1")
    stem_kernel: int = Field(3, ge=1, le=7)
    pool: int | None = Field(None, ge=1, le=32, description="P: average-pool kernel; null = global")
    activation: Literal["relu", "gelu", "silu"] = "relu"
    se_ratio: int | None = Field(None, ge=1, le=256, description="squeeze-and-excitation reduction")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_classes: int = Field(NUM_CLASSES, ge=2)
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    @model_validator(mode="after")
    def _check(self) -> ResNetConfig:
        n = len(self.blocks)
        for name in ("channels", "kernels", "skip_kernels", "strides"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} has {len(v)} entries but blocks has {n} stages")
        if any(b < 1 or b > 64 for b in self.blocks):
            raise ValueError(f"blocks must be 1..64 per stage, got {self.blocks}")
        if any(c < 1 or c > 2048 for c in self.channels):
            raise ValueError(f"channels must be 1..2048, got {self.channels}")
        for name in ("kernels", "skip_kernels"):
            v = getattr(self, name) or []
            if any(k < 1 or k > 7 or k % 2 == 0 for k in v):
                raise ValueError(f"{name} must be odd sizes 1..7, got {v}")
        if any(s not in (1, 2) for s in (self.strides or [])):
            raise ValueError(f"strides must be 1 or 2, got {self.strides}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    def stage_kernels(self) -> list[int]:
        return self.kernels or [3] * len(self.blocks)

    def stage_skip_kernels(self) -> list[int]:
        return self.skip_kernels or [1] * len(self.blocks)

    def stage_strides(self) -> list[int]:
        return self.strides or [1] + [2] * (len(self.blocks) - 1)


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN (+ optional SE), add the shortcut, act. The shortcut is the identity,
    or conv(K)+BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, skip_kernel: int,
                 activation: str, se_ratio: int | None) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, se_ratio) if se_ratio else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, skip_kernel, stride, skip_kernel // 2, bias=False), nn.BatchNorm2d(cout))
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.config = cfg
        stem = cfg.stem_channels or cfg.channels[0]
        self.normalize = Normalize(cfg.mean, cfg.std)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, cfg.stem_kernel, 1, cfg.stem_kernel // 2, bias=False),
            nn.BatchNorm2d(stem), make_activation(cfg.activation))
        stages, cin = [], stem
        for b, c, k, sk, s in zip(cfg.blocks, cfg.channels, cfg.stage_kernels(), cfg.stage_skip_kernels(),
                                  cfg.stage_strides()):
            blocks = [BasicBlock(cin if i == 0 else c, c, s if i == 0 else 1, k, sk, cfg.activation, cfg.se_ratio)
                      for i in range(b)]
            stages.append(nn.Sequential(*blocks))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.head = nn.Linear(self._feature_dim(), cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pool is None:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.avg_pool2d(x, self.config.pool).flatten(1)

    @torch.no_grad()
    def _feature_dim(self) -> int:
        was_training = self.training
        self.eval()
        try:
            feats = self.stages(self.stem(torch.zeros(1, 3, 32, 32)))
        finally:
            self.train(was_training)
        if self.config.pool is not None and self.config.pool > feats.shape[-1]:
            raise UserError(f"pool {self.config.pool} is larger than the final feature map "
                            f"({feats.shape[-1]}x{feats.shape[-1]})")
        return self._pool(feats).shape[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self.stages(self.stem(self.normalize(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
