"""Our batched, device-resident data pipeline vs the usual per-image DataLoader, on the same model and
training step (the fast recipe's network and optimizer).

    python benchmarks/cpu_throughput.py [--batch-size 2000] [--steps 8] [--workers 2]

Baseline ("the usual way", as in the reference studies' code): a torch.utils.data.Dataset that turns each
uint8 image into a PIL image, random-crops it with 4 px zero padding, flips it with probability 0.5 and
normalises it (numpy/PIL, since torchvision does not import with CPU torch 2.13), batched by a
DataLoader with worker processes. Ours: the whole uint8 dataset resident on the device, batches
gathered and augmented there (same crop + flip), normalisation inside the model.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common import RESULTS, machine, print_table, run_cli, timed_steps, write_json
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, BatchLoader, build_augment, load_cifar10
from resnet5m.models import build_model
from resnet5m.runtime import resolve_device, tune_glibc_malloc
from resnet5m.training.config import build_config
from resnet5m.training.optim import build_optimizers
from resnet5m.training.recipes import resolve_recipe


class PerImageCifar(Dataset):
    """The per-image pipeline of typical CIFAR training scripts (PIL + numpy, one image at a time)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images_hwc, labels
        self.mean = np.array(CIFAR10_MEAN, np.float32).reshape(3, 1, 1)
        self.std = np.array(CIFAR10_STD, np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        arr = np.asarray(img)
        arr = np.pad(arr, ((4, 4), (4, 4), (0, 0)))  # RandomCrop(32, padding=4)
        y, x = np.random.randint(0, 9, 2)
        arr = arr[y:y + 32, x:x + 32]
        if np.random.rand() < 0.5:  # RandomHorizontalFlip()
            arr = arr[:, ::-1]
        t = arr.transpose(2, 0, 1).astype(np.float32) / 255  # ToTensor()
        t = (t - self.mean) / self.std  # Normalize(mean, std)
        return torch.from_numpy(np.ascontiguousarray(t)), int(self.labels[i])


def baseline_prepare(device):
    def prepare(batch):
        x, y = batch
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x, y.to(device)
    return prepare


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=None, help="default: the fast recipe's (2000)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--out")
    args = p.parse_args()
    tune_glibc_malloc()
    device = resolve_device(args.device)
    data = load_cifar10()
    recipe = build_config(resolve_recipe("fast"), [])  # the fast recipe's network and optimizers
    args.batch_size = args.batch_size or recipe.train.batch_size
    n = args.batch_size * (args.steps + args.warmup)

    def fresh():
        torch.manual_seed(0)
        m = build_model(recipe.model).to(device, memory_format=torch.channels_last)
        m.init_from_data(data.train_images[:5000].to(device).float() / 255)
        return m, build_optimizers(m, recipe.optimizer, args.batch_size)

    results = {}
    model, opts = fresh()
    ours = BatchLoader(data.train_images[:n].to(device), data.train_labels[:n].to(device), args.batch_size,
                       augment=build_augment(AugmentConfig(crop={"padding": 4, "mode": "zero"}, flip={})), seed=0)
    results["ours (batched, on device)"] = timed_steps(model, opts, ours.epoch(0), args.steps, args.warmup,
                                                       device, lambda b: (b.images, b.labels))
    model, opts = fresh()
    ds = PerImageCifar(data.train_images[:n].permute(0, 2, 3, 1).numpy(), data.train_labels[:n].numpy())
    dl = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                    persistent_workers=args.workers > 0)
    # the baseline's inputs are already normalised, so the model's own normalisation layer is made a no-op
    model.normalize.mean.zero_()
    model.normalize.std.fill_(1.0)
    results[f"baseline (per-image PIL/numpy, DataLoader, {args.workers} workers)"] = timed_steps(
        model, opts, dl, args.steps, args.warmup, device, baseline_prepare(device))
    base = list(results.values())[1]["images_per_s"]
    rows = [[k, f"{v['images_per_s']:.0f}", f"{v['data_share'] * 100:.1f}%", f"{v['images_per_s'] / base:.2f}x"]
            for k, v in results.items()]
    info = machine(device)
    print(f"same model (fastnet 64/256/256) and step, batch {args.batch_size}, {args.steps} timed steps; "
          f"{info['cpu'] if device.type == 'cpu' else info.get('gpu')}, {info['threads']} threads, torch "
          f"{info['torch']}")
    print_table(["pipeline", "img/s", "data share", "vs baseline"], rows)
    path = write_json(args.out or RESULTS / "throughput" / "cpu_throughput.json",
                      {"machine": info, "batch_size": args.batch_size, "results": results,
                       "ratio": list(results.values())[0]["images_per_s"] / base})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_cli(main)
