"""Batched augmentation on image tensors, on whatever device trains.

Every transform is one small function ``f(x, ctx, **params) -> x`` on a float batch ``x`` of
shape (N, 3, H, W) with values in [0, 1]; ``ctx`` carries the batch's random generator, the
epoch and the dataset indices of its images. Adding a transform means writing one function,
one config class and one line in ``_STEPS``. Normalisation is not here: it is the model's
first layer, so checkpoints and exported models carry their own input statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from resnet5m.data.cifar10 import CIFAR10_MEAN
from resnet5m.util.validation import StrictModel


@dataclass
class AugContext:
    """The batch's random stream and whereabouts. Under multi-process training a process holds only a
    shard (rows ``start:start+n`` of a global batch of ``total``): every draw is made for the whole
    global batch and sliced, so an image is augmented the same way whatever the number of processes."""

    generator: torch.Generator
    epoch: int
    indices: torch.Tensor  # dataset indices of the images in the batch (shard)
    seed: int = 0
    start: int = 0  # this shard's first row in the global batch
    total: int | None = None  # global batch size (None: the shard is the whole batch)

    def rand(self, n: int, *tail: int, device: torch.device) -> torch.Tensor:
        """Uniform [0, 1) values for ``n`` images of this shard."""
        shape = (self.total or n, *tail)
        return torch.rand(shape, generator=self.generator, device=device)[self.start:self.start + n]

    def randint(self, low: int, high: int, n: int, *tail: int, device: torch.device) -> torch.Tensor:
        shape = (self.total or n, *tail)
        return torch.randint(low, high, shape, generator=self.generator, device=device)[self.start:self.start + n]


def _uniform(ctx: AugContext, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return ctx.rand(n, device=device) * (hi - lo) + lo


def _apply_with_prob(x: torch.Tensor, y: torch.Tensor, p: float, ctx: AugContext) -> torch.Tensor:
    """Per image: take ``y`` with probability ``p``, else keep ``x``."""
    if p >= 1.0:
        return y
    keep = ctx.rand(len(x), device=x.device) >= p
    return torch.where(keep.view(-1, 1, 1, 1), x, y)


# --- geometric ---------------------------------------------------------------------------------

def random_crop(x: torch.Tensor, ctx: AugContext, padding: int = 4, mode: str = "reflect",
                size: int | None = None) -> torch.Tensor:
    """Pad by ``padding`` (reflect or zero) and take a random ``size`` crop per image (default: input size)."""
    n, _, h, w = x.shape
    out = size or h
    if padding:
        x = F.pad(x, (padding,) * 4, mode="reflect" if mode == "reflect" else "constant")
    max_off = x.shape[-1] - out
    dy = ctx.randint(0, max_off + 1, n, device=x.device)
    dx = ctx.randint(0, max_off + 1, n, device=x.device)
    ar = torch.arange(out, device=x.device)
    rows = (dy[:, None] + ar)[:, :, None]
    cols = (dx[:, None] + ar)[:, None, :]
    # Advanced indexing gives (N, out, out, C); the permuted view is channels_last in memory.
    return x[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _affine(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Resample ``x`` with per-image 2x3 affine matrices (output->input, normalised coordinates)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def rotation(x: torch.Tensor, ctx: AugContext, degrees: float = 15.0, p: float = 1.0) -> torch.Tensor:
    """Rotate each image by an angle uniform in [-degrees, degrees]; corners are filled with black."""
    ang = _uniform(ctx, len(x), -degrees, degrees, x.device) * (math.pi / 180)
    cos, sin, zero = ang.cos(), ang.sin(), torch.zeros_like(ang)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _apply_with_prob(x, _affine(x, theta), p, ctx)


def translate(x: torch.Tensor, ctx: AugContext, fraction: float = 0.1, p: float = 1.0) -> torch.Tensor:
    """Shift each image by a whole number of pixels up to ``fraction`` of its size in x and y."""
    n, _, h, w = x.shape
    max_px = int(round(fraction * w))
    shift = ctx.randint(-max_px, max_px + 1, n, 2, device=x.device).to(x.dtype)
    one, zero = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
    theta = torch.stack([torch.stack([one, zero, -2 * shift[:, 0] / w], 1),
                         torch.stack([zero, one, -2 * shift[:, 1] / h], 1)], 1)
    return _apply_with_prob(x, _affine(x, theta), p, ctx)


def resized_crop(x: torch.Tensor, ctx: AugContext, scale: tuple[float, float] = (0.35, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random box of area fraction ``scale`` and aspect ``ratio`` and resize it back to full size."""
    n = len(x)
    area = _uniform(ctx, n, scale[0], scale[1], x.device)
    logr = _uniform(ctx, n, math.log(ratio[0]), math.log(ratio[1]), x.device)
    r = logr.exp()
    bw = (area * r).sqrt().clamp(max=1.0)  # box width as a fraction of the image width
    bh = (area / r).sqrt().clamp(max=1.0)
    cx = (_uniform(ctx, n, -1, 1, x.device)) * (1 - bw)
    cy = (_uniform(ctx, n, -1, 1, x.device)) * (1 - bh)
    zero = torch.zeros(n, device=x.device)
    theta = torch.stack([torch.stack([bw, zero, cx], 1), torch.stack([zero, bh, cy], 1)], 1)
    return _affine(x, theta, padding_mode="border")


# --- flips ---------------------------------------------------------------------------------------

def _index_bit(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed pseudo-random bit per dataset index (same bit every epoch for the same seed)."""
    h = (indices.long() * 0x9E3779B1 + seed * 0x85EBCA77 + 0x632BE5AB) & 0xFFFFFFFF
    h = (h ^ (h >> 15)) * 0x2C1B3C6D & 0xFFFFFFFF
    h = (h ^ (h >> 12)) * 0x297A2D39 & 0xFFFFFFFF
    return ((h ^ (h >> 15)) >> 7) & 1 == 1


def flip(x: torch.Tensor, ctx: AugContext, mode: str = "random", p: float = 0.5) -> torch.Tensor:
    """Horizontal flip. ``random``: each image with probability p. ``alternating`` (airbench): each
    image gets a fixed random flip on even epochs and the opposite on odd epochs, so every image is
    seen both ways within any two consecutive epochs (less redundancy than independent coin flips)."""
    if mode == "alternating":
        mask = _index_bit(ctx.indices, ctx.seed) ^ (ctx.epoch % 2 == 1)
    else:
        mask = ctx.rand(len(x), device=x.device) < p
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def vflip(x: torch.Tensor, ctx: AugContext, p: float = 0.5) -> torch.Tensor:
    """Vertical flip of each image with probability p."""
    mask = ctx.rand(len(x), device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-2), x)


# --- photometric ---------------------------------------------------------------------------------

_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _factor(ctx: AugContext, n: int, amount: float, device: torch.device) -> torch.Tensor:
    return _uniform(ctx, n, max(0.0, 1 - amount), 1 + amount, device).view(-1, 1, 1, 1)


def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``turns`` (fraction of a full turn) per image, via a rotation in YIQ space."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    ang = turns * 2 * math.pi
    cos, sin = ang.cos(), ang.sin()
    one, zero = torch.ones_like(ang), torch.zeros_like(ang)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)  # (N, 3, 3)
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("nij,njhw->nihw", m, x)


def color_jitter(x: torch.Tensor, ctx: AugContext, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.0, p: float = 1.0) -> torch.Tensor:
    """torchvision-style jitter (fixed order: brightness, contrast, saturation, hue), clamped to [0, 1]."""
    n, dev = len(x), x.device
    y = x
    if brightness:
        y = y * _factor(ctx, n, brightness, dev)
    if contrast:
        mean = _gray(y).mean((1, 2, 3), keepdim=True)
        y = (y - mean) * _factor(ctx, n, contrast, dev) + mean
    if saturation:
        g = _gray(y)
        y = (y - g) * _factor(ctx, n, saturation, dev) + g
    if hue:
        y = _hue_rotate(y, _uniform(ctx, n, -hue, hue, dev))
    return _apply_with_prob(x, y.clamp(0, 1), p, ctx)


def gaussian_blur(x: torch.Tensor, ctx: AugContext, kernel_size: int = 3,
                  sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5) -> torch.Tensor:
    """Blur each image with a Gaussian of random sigma (separable, grouped convolution)."""
    n, c, h, w = x.shape
    s = _uniform(ctx, n, sigma[0], sigma[1], x.device)
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    z = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    z = F.conv2d(z, k.view(n * c, 1, 1, -1), groups=n * c)
    z = F.conv2d(z, k.view(n * c, 1, -1, 1), groups=n * c)
    return _apply_with_prob(x, z.view(n, c, h, w), p, ctx)


def cutout(x: torch.Tensor, ctx: AugContext, size: int = 8, p: float = 1.0,
           fill: tuple[float, float, float] = CIFAR10_MEAN) -> torch.Tensor:
    """Fill a ``size`` x ``size`` square (centre anywhere, clipped at the border) with the mean colour."""
    n, _, h, w = x.shape
    cy = ctx.randint(0, h, n, device=x.device)
    cx = ctx.randint(0, w, n, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    y0 = (cy - size // 2).view(-1, 1, 1)
    x0 = (cx - size // 2).view(-1, 1, 1)
    m = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    fill_t = torch.tensor(fill, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    y = torch.where(m.unsqueeze(1), fill_t, x)
    return _apply_with_prob(x, y, p, ctx)


# --- configuration ------------------------------------------------------------------------------

class CropConfig(StrictModel):
    padding: int = Field(4, ge=0, le=16)
    mode: str = Field("reflect", pattern="^(reflect|zero)$")
    size: int | None = Field(None, ge=8, le=64, description="crop size; default = image size")

    @model_validator(mode="after")
    def _fits(self) -> CropConfig:
        if self.size is not None and self.size > 32 + 2 * self.padding:  # CIFAR-10's 32 px, padded on both sides
            raise ValueError(f"size {self.size} is larger than the padded image (32 + 2 x padding {self.padding} = "
                             f"{32 + 2 * self.padding} px)")
        return self


class ResizedCropConfig(StrictModel):
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be 0 < low <= high, got {v}")
        return v


class RotationConfig(StrictModel):
    degrees: float = Field(15.0, ge=0, le=180)
    p: float = Field(1.0, ge=0, le=1)


class TranslateConfig(StrictModel):
    fraction: float = Field(0.1, ge=0, le=0.5)
    p: float = Field(1.0, ge=0, le=1)


class FlipConfig(StrictModel):
    mode: str = Field("random", pattern="^(random|alternating)$")
    p: float = Field(0.5, ge=0, le=1)


class VFlipConfig(StrictModel):
    p: float = Field(0.5, ge=0, le=1)


class ColorJitterConfig(StrictModel):
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    saturation: float = Field(0.2, ge=0, le=1)
    hue: float = Field(0.0, ge=0, le=0.5)
    p: float = Field(1.0, ge=0, le=1)


class BlurConfig(StrictModel):
    kernel_size: int = Field(3, ge=3, le=9)
    sigma: tuple[float, float] = (0.1, 2.0)
    p: float = Field(0.5, ge=0, le=1)

    @field_validator("sigma")
    @classmethod
    def _positive_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be 0 < low <= high, got {v}")
        return v

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd, got {v}")
        return v


class CutoutConfig(StrictModel):
    size: int = Field(8, ge=1, le=32)
    p: float = Field(1.0, ge=0, le=1)


class AugmentConfig(StrictModel):
    """Which transforms run (``null`` = off) and their parameters; applied in the order listed."""

    resized_crop: ResizedCropConfig | None = None
    crop: CropConfig | None = CropConfig()
    rotation: RotationConfig | None = None
    translate: TranslateConfig | None = None
    flip: FlipConfig | None = FlipConfig()
    vflip: VFlipConfig | None = None
    color_jitter: ColorJitterConfig | None = None
    blur: BlurConfig | None = None
    cutout: CutoutConfig | None = None


_STEPS: dict[str, Callable[..., torch.Tensor]] = {
    "resized_crop": resized_crop,
    "crop": random_crop,
    "rotation": rotation,
    "translate": translate,
    "flip": flip,
    "vflip": vflip,
    "color_jitter": color_jitter,
    "blur": gaussian_blur,
    "cutout": cutout,
}

Augment = Callable[[torch.Tensor, AugContext], torch.Tensor]


def build_augment(cfg: AugmentConfig) -> Augment | None:
    """Compose the enabled transforms of ``cfg`` into one function (None if nothing is enabled)."""
    steps = [partial(_STEPS[name], **sub.model_dump()) for name in _STEPS
             if (sub := getattr(cfg, name)) is not None]
    if not steps:
        return None

    def augment(x: torch.Tensor, ctx: AugContext) -> torch.Tensor:
        for step in steps:
            x = step(x, ctx)
        return x

    return augment
