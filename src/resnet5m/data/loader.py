"""The whole dataset stays resident (uint8) on the training device; batches are gathered,
converted to float and augmented there. Every random choice derives from (seed, epoch, batch),
so an epoch can be replayed from any batch: this is what makes resume exact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from resnet5m.data.augment import AugContext, Augment, random_crop
from resnet5m.runtime.seeding import mix_seed


class Batch(NamedTuple):
    images: torch.Tensor  # float (N, 3, H, W) in [0, 1], channels_last
    labels: torch.Tensor  # int64 (N,)
    indices: torch.Tensor  # dataset indices
    number: int  # position of the batch within its epoch


class BatchLoader:
    """Shuffled, augmented mini-batches over tensors that already live on the target device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 augment: Augment | None = None, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, channels_last: bool = True, shard: tuple[int, int] = (0, 1)) -> None:
        """``batch_size`` is the global batch; with ``shard=(rank, world)`` this process yields rows
        ``rank * batch_size / world`` onwards of every global batch (same order, same augmentation)."""
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        if batch_size % shard[1]:
            raise ValueError(f"batch size {batch_size} is not divisible by {shard[1]} shards")
        self.rank, self.world = shard
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed = seed
        self.channels_last = channels_last

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last and n >= b else -(-n // b)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.images), device=self.images.device)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x5EED))
        return torch.randperm(len(self.images), generator=gen).to(self.images.device)

    def batch_generator(self, epoch: int, batch: int) -> torch.Generator:
        gen = torch.Generator(device=self.images.device)
        gen.manual_seed(mix_seed(self.seed, epoch, batch))
        return gen

    def epoch(self, epoch: int, start: int = 0, resolution: Callable[[int], tuple[int, str] | None] | None = None
              ) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` starting at batch index ``start``.

        ``resolution(b)`` (progressive resizing) gives batch ``b``'s ``(size, mode)`` after augmentation:
        ``crop`` takes a random size x size window, ``resize`` downsamples the whole image (area
        interpolation); None keeps the full size.
        """
        order = self.order(epoch)
        per = self.batch_size // self.world
        first, total = self.rank * per, (self.batch_size if self.world > 1 else None)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size][first:first + per]
            x = self.images[idx].float().div_(255)
            if self.augment is not None:
                x = self.augment(x, AugContext(self.batch_generator(epoch, b), epoch, idx, self.seed, first, total))
            size, mode = (resolution(b) if resolution is not None else None) or (x.shape[-1], "crop")
            if mode == "resize" and size < x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="area")
            elif size < x.shape[-1]:
                ctx = AugContext(self.batch_generator(epoch, b + (1 << 20)), epoch, idx, self.seed, first, total)
                x = random_crop(x, ctx, padding=0, size=size)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, self.labels[idx], idx, b)
