"""Time to accuracy of a recipe (default: the fast recipe) over several seeds.

    python benchmarks/time_to_accuracy.py [--config fast] [--seeds 0,1,2] [--set KEY=VALUE ...]

For each seed it trains on all 50,000 training images (the recipe has no validation split and takes
its last epoch: no test-set selection), then evaluates once on the 10,000 test images, with and
without the recipe's test-time augmentation.

What the clock includes: `train_s` is the wall time of the training loop (batch gathering and
augmentation, forward, backward, optimizer, weight averaging) plus the per-run model set-up
(construction and the data-dependent whitening init). It excludes loading the dataset from disk, a
one-off warm-up (a few untimed steps on a throwaway model that let oneDNN/cuDNN pick kernels, and
the torch.compile compilation when --compile is on; reported as `warmup_s`), checkpoint writing and
evaluation, which is reported separately (`eval_s`, `tta_s`).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from common import machine, measure_peak_flops, print_table, sync, write_json
from resnet5m.cli.common import int_list
from resnet5m.data import load_cifar10
from resnet5m.evaluation.inference import predict_logits
from resnet5m.evaluation.metrics import evaluate_logits
from resnet5m.models import build_model
from resnet5m.models.summary import mult_adds_per_image
from resnet5m.reporting.aggregate import mean_std
from resnet5m.runtime import resolve_device, tune_glibc_malloc
from resnet5m.training.config import build_config
from resnet5m.training.engine import Trainer
from resnet5m.training.recipes import resolve_recipe


def macs_at(model_cfg, size: int) -> int:
    from torchinfo import summary

    return int(summary(build_model(model_cfg), input_size=(1, 3, size, size), verbose=0, device="cpu",
                       mode="eval").total_mult_adds)


def training_flops(trainer: Trainer) -> float:
    """Forward + backward ~= 3 x forward = 6 FLOPs per multiply-add, summed over the epochs' crop sizes."""
    cfg = trainer.cfg
    images_per_epoch = trainer.steps_per_epoch * cfg.train.batch_size
    steps_left, total = trainer.total_steps, 0.0
    cache: dict[int, int] = {}
    for epoch in range(trainer.epochs):
        size = trainer.crop_size(epoch) or 32
        if size not in cache:
            cache[size] = macs_at(cfg.model, size)
        steps = min(trainer.steps_per_epoch, steps_left)
        steps_left -= steps
        total += 6.0 * cache[size] * steps * cfg.train.batch_size
    return total if images_per_epoch else math.nan


def warm_up(cfg, data, device) -> float:
    """Untimed: a few steps of a throwaway model at every input size the run will use, so kernel
    selection, allocator growth and (with --compile) compilation happen before the clock starts."""
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="warmup-"))
    try:
        trainer = Trainer(cfg.model_copy(update={"seed": 12345}), data, tmp, out=lambda s: None, progress=False)
        sizes = sorted({stage.size for stage in cfg.train.resolution_schedule} | {32})
        steps = 2 if device.type == "cpu" else 10
        for size in sizes:
            for _ in range(steps):
                x = torch.rand(cfg.train.batch_size, 3, size, size, device=trainer.device)
                x = x.contiguous(memory_format=torch.channels_last)
                loss = trainer.forward_model(x).float().logsumexp(1).mean()
                for opt in trainer.optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in trainer.optimizers:
                    opt.step()
        predict_logits(trainer.model, data.test_images[:2000], device=trainer.device,
                       batch_size=cfg.train.eval_batch_size)
        sync(trainer.device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def run_seed(cfg, data, seed: int, keep: Path | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"tta-bench-{seed}-"))
    try:
        seed_cfg = cfg.model_copy(update={"seed": seed})
        t0 = time.perf_counter()
        trainer = Trainer(seed_cfg, data, tmp, out=lambda s: None, progress=False)
        sync(trainer.device)
        init_s = time.perf_counter() - t0
        trainer.fit()
        sync(trainer.device)
        model = trainer.eval_model()
        kw = dict(batch_size=cfg.train.eval_batch_size, device=trainer.device, channels_last=cfg.channels_last,
                  autocast_dtype=trainer.dtype if trainer.dtype != torch.float32 else None)
        t1 = time.perf_counter()
        plain = evaluate_logits(predict_logits(model, data.test_images, **kw), data.test_labels)
        t2 = time.perf_counter()
        tta = evaluate_logits(predict_logits(model, data.test_images, tta=cfg.eval.tta, **kw), data.test_labels) \
            if cfg.eval.tta != "none" else plain
        t3 = time.perf_counter()
        if keep is not None:  # the trained weights, for later evaluation (e.g. `resnet5m evaluate`)
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tmp / "last.safetensors", keep / f"seed{seed}.safetensors")
        flops = training_flops(trainer)
        train_s = trainer.state.train_time_s + init_s
        return {"seed": seed, "test_acc": tta.accuracy, "test_acc_no_tta": plain.accuracy, "train_s": train_s,
                "loop_s": trainer.state.train_time_s, "init_s": init_s, "eval_s": t2 - t1, "tta_s": t3 - t2,
                "images": trainer.state.step * cfg.train.batch_size, "epochs": trainer.state.epoch,
                "images_per_s": trainer.state.step * cfg.train.batch_size / trainer.state.train_time_s,
                "train_flops": flops, "data_share": _data_share(trainer)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _data_share(trainer: Trainer) -> float | None:
    rows = trainer.metrics.rows
    if not rows:
        return None
    return sum(r["data_share"] * r["time_s"] for r in rows) / sum(r["time_s"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fast")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--label", default=None, help="name for the JSON file (default: time_to_accuracy_<config>)")
    p.add_argument("--out")
    p.add_argument("--keep-weights", type=Path, metavar="DIR", help="copy each seed's trained weights here")
    args = p.parse_args()
    tune_glibc_malloc()
    cfg = build_config(resolve_recipe(args.config), args.overrides)
    data = load_cifar10(cfg.data.path)
    device = resolve_device(cfg.device)
    info = machine(device)  # before training: the commit that runs, not the one at the end
    peak = measure_peak_flops(device, dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
    warmup_s = warm_up(cfg, data, device)
    macs = mult_adds_per_image(build_model(cfg.model))
    rows, results = [], []
    for seed in args.seeds:
        r = run_seed(cfg, data, seed, args.keep_weights)
        r["fraction_of_peak"] = r["train_flops"] / r["loop_s"] / peak
        results.append(r)
        rows.append([seed, f"{r['test_acc'] * 100:.2f}", f"{r['test_acc_no_tta'] * 100:.2f}", f"{r['train_s']:.1f}",
                     f"{r['tta_s']:.1f}", f"{r['images_per_s']:.0f}",
                     f"{(r['data_share'] or 0) * 100:.1f}%", f"{r['fraction_of_peak'] * 100:.0f}%"])
        print(f"  seed {seed}: {r['test_acc'] * 100:.2f}% in {r['train_s']:.1f}s", flush=True)
    acc = mean_std(r["test_acc"] for r in results)
    acc0 = mean_std(r["test_acc_no_tta"] for r in results)
    tim = mean_std(r["train_s"] for r in results)
    print(f"\n{args.config} recipe on {info.get('gpu') or info['cpu']} ({device}, {info['threads']} threads), "
          f"torch {info['torch']}, commit {info['commit']}")
    print(f"model: {macs / 1e6:.1f}M multiply-adds per 32x32 image; training FLOPs per run: "
          f"{results[0]['train_flops'] / 1e12:.1f} TFLOP; measured peak ({'fp32' if device.type == 'cpu' else 'bf16'}"
          f" matmul): {peak / 1e9:.0f} GFLOP/s")
    print(f"clock: training loop + model set-up/whitening; excludes dataset loading, warm-up ({warmup_s:.1f}s, "
          f"once), checkpoints and evaluation (reported separately)\n")
    print_table(["seed", "test acc % (TTA)", "no TTA %", "train s", "TTA eval s", "img/s", "aug share",
                 "% of peak"], rows)
    print(f"\nmean ± std over {len(results)} seeds: {acc[0] * 100:.2f} ± {acc[1] * 100:.2f} % "
          f"(without TTA {acc0[0] * 100:.2f} ± {acc0[1] * 100:.2f} %), training {tim[0]:.1f} ± {tim[1]:.1f} s")
    path = write_json(args.label or f"time_to_accuracy_{Path(args.config).stem}", {
        "machine": info, "config": cfg.model_dump(mode="json"), "overrides": args.overrides,
        "mult_adds_per_image": macs, "peak_flops": peak, "warmup_s": warmup_s,
        "clock": "training loop + per-run model set-up incl. whitening init; excludes data loading, one-off "
                 "warm-up/compile, checkpoints, evaluation", "results": results,
        "summary": {"test_acc_mean": acc[0], "test_acc_std": acc[1], "test_acc_no_tta_mean": acc0[0],
                    "train_s_mean": tim[0], "train_s_std": tim[1], "n": len(results)}}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
