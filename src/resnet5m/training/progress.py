"""Progress output: a live tqdm bar on a terminal, plain periodic lines elsewhere (nohup, CI, notebooks)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def is_interactive(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class EpochProgress:
    """Per-epoch progress with throughput, loss and lr. Never fails on odd streams."""

    def __init__(self, epoch: int, epochs: int, total_steps: int, *, stream: TextIO | None = None,
                 interval_s: float = 30.0, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.epoch, self.epochs, self.total = epoch, epochs, total_steps
        self.interval_s = interval_s
        self.enabled = enabled
        self.bar = None
        self.t0 = self.last_print = time.perf_counter()
        self.images = 0
        if enabled and is_interactive(self.stream):
            self.bar = tqdm(total=total_steps, desc=f"epoch {epoch + 1}/{epochs}", file=self.stream,
                            leave=False, dynamic_ncols=True, unit="step")

    def update(self, steps: int, images: int, loss: float, lr: float) -> None:
        self.images += images
        rate = self.images / max(1e-9, time.perf_counter() - self.t0)
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", refresh=False)
        elif self.enabled and time.perf_counter() - self.last_print >= self.interval_s:
            self.last_print = time.perf_counter()
            print(f"  epoch {self.epoch + 1}/{self.epochs}: {self.images} images, loss {loss:.4f}, lr {lr:.3g}, "
                  f"{rate:.0f} img/s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
