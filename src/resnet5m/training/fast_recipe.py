"""The fast recipe in one file: every trick in data-flow order, built from the package's own pieces.

This is what ``resnet5m train`` does with ``configs/fast.yaml`` (which holds every number), unrolled
without the engine's generality (no validation split, checkpoints, resume or progress bar). It gives
the same per-step losses as the engine (``tests/test_fast_recipe.py`` checks), so it is a faithful
reading guide, and it runs on its own:

    python -m resnet5m.training.fast_recipe [--seed 0] [--epochs 10]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from resnet5m.data.augment import build_augment
from resnet5m.data.cifar10 import Cifar10
from resnet5m.data.loader import BatchLoader
from resnet5m.evaluation.evaluate import final_evaluation
from resnet5m.runtime.device import resolve_device
from resnet5m.runtime.seeding import seed_everything
from resnet5m.training.config import RunConfig, build_config
from resnet5m.training.loop import StepParts, train_step
from resnet5m.training.losses import make_loss
from resnet5m.training.optim import build_optimizers
from resnet5m.training.recipes import resolve_recipe
from resnet5m.training.schedule import Schedule, resolution_at
from resnet5m.training.trainer import build_network


def train_fast(cfg: RunConfig, data: Cifar10, log=print) -> nn.Module:
    """Train the fast recipe ``cfg`` on all of ``data``'s training images; return the trained model."""
    t, device = cfg.train, resolve_device(cfg.device)
    seed_everything(cfg.seed)
    # 1. Data: the whole uint8 training set lives on the device; normalisation is the model's first layer.
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    # 2. Model: the residual FastNet (conv-pool-BN-GELU groups of widths 64/256/256, 1x1-conv shortcuts),
    #    its frozen 2x2 patch-whitening stem initialised from the covariance of 5,000 images' patches,
    #    dirac-initialised 3x3 convs, BatchNorm with frozen scale, logits scaled by 1/256.
    model = build_network(cfg, device, images[:5000])
    # 3. Augmentation, on the device, per batch: 2 px random translation (reflect padding) and
    #    alternating flips (each image flipped one way on even epochs, the other way on odd ones).
    loader = BatchLoader(images, labels, t.batch_size, augment=build_augment(cfg.augment), seed=cfg.seed,
                         channels_last=cfg.channels_last)
    steps_per_epoch = len(loader)
    total_steps = math.ceil(t.epochs * steps_per_epoch)
    # 4. Optimizers: Muon (orthogonalised momentum, fixed weight norms) for every conv filter; Nesterov SGD
    #    for BN biases, the whitening bias and the head, with lr and weight decay per 1,024 examples
    #    (independent of batch size and momentum) and a 12.64x larger lr for the head.
    optimizers = build_optimizers(model, cfg.optimizer, t.batch_size)
    # 5. Schedule: the lr decays linearly from its peak at step 0 to zero at the last step.
    schedule = Schedule(cfg.schedule, total_steps, steps_per_epoch)
    # 6. Loss: cross-entropy with label smoothing 0.2.
    parts = StepParts(model=model, optimizers=optimizers, loss=make_loss(t.label_smoothing), device=device,
                      schedule=schedule.factor)
    step = 0
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        t0 = time.perf_counter()
        model.train()
        model.on_epoch_start(epoch)  # 7. the whitening bias trains for 3 epochs, then freezes
        # 8. Progressive resizing: random 24x24 crops of the augmented 32x32 batch for the first epochs.
        def size(b: int, epoch: int = epoch) -> tuple[int, str] | None:
            return resolution_at(t.resolution_schedule, epoch * steps_per_epoch + b, steps_per_epoch)
        for batch in loader.epoch(epoch, resolution=size):
            if step == total_steps:
                break
            loss, _ = train_step(parts, step, batch.images, batch.labels)  # 9. forward, loss, backward, steps
            step += 1
        log(f"epoch {epoch + 1}: loss {loss.item():.4f}, {time.perf_counter() - t0:.1f}s")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, help="shorten (the schedule and the 24 px phase do not rescale)")
    args = p.parse_args()
    from resnet5m.data.sources import load_cifar10
    from resnet5m.runtime.allocator import tune_glibc_malloc

    tune_glibc_malloc()
    sets = [f"seed={args.seed}"] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    cfg = build_config(resolve_recipe("fast"), sets)
    data = load_cifar10(cfg.data.path)
    model = train_fast(cfg, data)
    # 10. Test-time augmentation: the image and its mirror, each also shifted 1 px up-left and down-right
    #     (weights 0.5 / 0.25 / 0.25): six views, averaged logits. Evaluated once on the test set.
    r = final_evaluation(model.to(memory_format=torch.channels_last), data.test_images, data.test_labels,
                         tta=cfg.eval.tta, batch_size=cfg.train.eval_batch_size, device=resolve_device(cfg.device))
    print(f"test accuracy {r['test_acc']:.4f} with TTA ({r['test_acc_no_tta']:.4f} without)")


if __name__ == "__main__":
    main()
