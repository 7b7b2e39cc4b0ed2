"""Where a recipe's training step spends its time: torch.profiler over one or more epochs, on synthetic data
(only the shapes matter, so it runs before the real dataset has reached a device machine).

    python benchmarks/profile_step.py --recipe fast --device cuda --out prof/     # GPU: is the step host-bound?
    python benchmarks/profile_step.py --recipe fast --images 2000 --epochs 1      # CPU, a quick look

It trains the recipe once untimed (warm-up: cuDNN/oneDNN algorithm search), then again under the profiler,
at full resolution (``train.resolution_schedule`` cleared) on ``--images`` random images, and writes
``profile_<recipe>.txt``: wall time, the summed device-kernel time (the share of the wall clock the GPU was
busy; the rest is host work the GPU waited for), and the top operators by self device time and by self
host time. The profiler adds host overhead of its own, so the busy share is a lower bound. Not a result
about accuracy: the labels are random.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, run_cli  # noqa: E402
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data.cifar10 import Cifar10  # noqa: E402
from resnet5m.errors import UserError  # noqa: E402
from resnet5m.runtime.device import resolve_device  # noqa: E402
from resnet5m.training.config import build_config  # noqa: E402
from resnet5m.training.recipes import resolve_recipe  # noqa: E402
from resnet5m.training.run import train_run  # noqa: E402


def synthetic(n: int, seed: int = 0) -> Cifar10:
    g = torch.Generator().manual_seed(seed)
    img = lambda k: torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    lab = lambda k: torch.randint(0, 10, (k,), generator=g)  # noqa: E731
    return Cifar10(img(n), lab(n), img(500), lab(500), "synthetic")


def run_once(recipe: str, data: Cifar10, args: argparse.Namespace, work: Path, name: str) -> float:
    cfg = build_config(resolve_recipe(recipe), [f"device={args.device}", "seed=0", f"train.epochs={args.epochs}",
                                                "train.resolution_schedule=[]", "data.val_size=0", *args.set])
    t0 = time.perf_counter()
    train_run(cfg, data, work / name, out=lambda s: None, progress=False, test=False)
    if resolve_device(args.device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=10_000, help="synthetic training images (default 10,000)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    for value, flag, most in ((args.images, "--images", 1_000_000), (args.rows, "--rows", 10_000)):
        if not 1 <= value <= most:
            raise UserError(f"{flag} {value}: must be 1..{most:,}")
    if not 0 < args.epochs <= 100:
        raise UserError(f"--epochs {args.epochs:g}: must be in (0, 100]")
    build_config(resolve_recipe(args.recipe), [f"device={args.device}", *args.set])  # valid before writing
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    data = synthetic(args.images)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        warm = run_once(args.recipe, data, args, Path(tmp), "warm")
        plain = run_once(args.recipe, data, args, Path(tmp), "plain")  # without the profiler's overhead
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            wall = run_once(args.recipe, data, args, Path(tmp), "profiled")
    events = prof.key_averages()
    # kernels only: user annotations (e.g. "Optimizer.step#Muon.step") are GPU-timeline spans, not kernel time
    dev_us = sum(e.self_device_time_total for e in events
                 if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    lines = [f"recipe {args.recipe}, {args.images} synthetic images x {args.epochs:g} epochs at 32 px; "
             f"machine {machine(device)}",
             f"warm-up run {warm:.2f}s; run without profiler {plain:.2f}s; "
             f"profiled run {wall:.2f}s (wall, incl. set-up)"]
    if device.type == "cuda":
        lines.append(f"summed device-kernel time {dev_us / 1e6:.2f}s = {dev_us / 1e6 / plain * 100:.0f}% of the "
                     f"unprofiled wall time (the GPU is idle for the rest: host-bound share; set-up included)")
        lines += ["", "top by self device time:", events.table(sort_by="self_device_time_total", row_limit=args.rows)]
    lines += ["", "top by self host time:", events.table(sort_by="self_cpu_time_total", row_limit=args.rows)]
    path = args.out / f"profile_{args.recipe}.txt"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4]))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
