"""Training throughput (images/s) of every model preset, with the real batched augmentation pipeline.

    python benchmarks/train_throughput.py [--batch-size 128] [--steps 12] [--device auto]

Measures full training steps (augmentation on the device, forward, backward, optimizer step) after
warm-up steps that are not timed; fp32, channels_last, glibc allocator tuning as in `resnet5m train`.
"""

from __future__ import annotations

import argparse

import torch

from common import RESULTS, machine, print_table, run_cli, timed_steps, write_json
from resnet5m.cli.common import batch_size_arg  # noqa: E402
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data import AugmentConfig, BatchLoader, build_augment, load_cifar10
from resnet5m.models import PRESETS, build_model, count_parameters
from resnet5m.models.summary import mult_adds_per_image
from resnet5m.runtime import resolve_device, tune_glibc_malloc
from resnet5m.training.config import OptimizerConfig
from resnet5m.training.optim import build_optimizers


def bench(model: torch.nn.Module, loader: BatchLoader, device: torch.device, steps: int, warmup: int) -> dict:
    model = model.to(device, memory_format=torch.channels_last).train()
    opts = build_optimizers(model, OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True), 128)
    return timed_steps(model, opts, loader.epoch(0), steps, warmup, device, lambda b: (b.images, b.labels))


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=batch_size_arg, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="JSON path (default benchmarks/results/throughput/train_throughput.json)")
    args = p.parse_args()
    tune_glibc_malloc()
    device = resolve_device(args.device)
    data = load_cifar10()
    images = data.train_images[: args.batch_size * (args.steps + args.warmup)].to(device)
    labels = data.train_labels[: len(images)].to(device)
    loader = BatchLoader(images, labels, args.batch_size, augment=build_augment(AugmentConfig()), seed=0)
    configs = {name: pre.config for name, pre in PRESETS.items()}
    rows, results = [], []
    for name, cfg in configs.items():
        model = build_model(cfg)
        macs = mult_adds_per_image(model)
        r = bench(model, loader, device, args.steps, args.warmup)
        flops = 6 * macs * r["images_per_s"]
        epoch_min = 50000 / r["images_per_s"] / 60
        results.append({"model": name, "params": count_parameters(model), "mult_adds": macs, **r,
                        "train_gflops_per_s": flops / 1e9, "minutes_per_epoch_50k": epoch_min})
        rows.append([name, f"{count_parameters(model):,}", f"{macs / 1e6:.0f}M", f"{r['images_per_s']:.0f}",
                     f"{epoch_min:.1f}", f"{flops / 1e9:.0f}", f"{r['data_share'] * 100:.1f}%"])
        print(f"  measured {name}", flush=True)
    info = machine(device)
    print(f"\ntraining throughput, batch {args.batch_size}, fp32, channels_last, {info['threads']} threads, "
          f"{info['cpu'] if device.type == 'cpu' else info.get('gpu')}, torch {info['torch']}")
    print_table(["model", "params", "MACs/img", "img/s", "min/epoch", "GFLOP/s", "aug share"], rows)
    path = write_json(args.out or RESULTS / "throughput" / "train_throughput.json",
                      {"machine": info, "batch_size": args.batch_size, "steps": args.steps, "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_cli(main)
