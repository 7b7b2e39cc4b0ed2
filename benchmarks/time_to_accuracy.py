"""Time to accuracy of a recipe (default: the fast recipe) over several seeds.

    python benchmarks/time_to_accuracy.py [--config fast] [--seeds 100,101,102] [--set KEY=VALUE ...]
    python benchmarks/time_to_accuracy.py --merge A.json B.json --out C.json   # combine runs made apart

For each seed it trains the recipe, then evaluates the trained model once, with and without the
recipe's test-time augmentation. Where it evaluates depends on the recipe's split:
- ``data.val_size: 0`` (the recipes as shipped): trained on all 50,000 training images, scored on
  the 10,000 test images. Use fresh seeds that no tuning run used.
- ``data.val_size > 0`` (tuning, e.g. ``--set data.val_size=5000``): trained on the rest, scored on
  the held-out stratified validation split; the test set is not touched.

The JSON is rewritten after every seed (a cut loses one run, not all); running the same command
again skips the seeds already in it. Each seed's entry records the machine (CPU model), date and
commit it ran on.

What the clock includes: `train_s` is the wall time of the training loop (batch gathering and
augmentation, forward, backward, optimizer, weight averaging) plus the per-run model set-up
(construction and the data-dependent whitening init). It excludes loading the dataset from disk, a
one-off warm-up (a few untimed steps on a throwaway model that let oneDNN/cuDNN pick kernels, and
the torch.compile compilation when --compile is on; reported as `warmup_s`), checkpoint writing and
evaluation, which is reported separately (`eval_s`, `tta_s`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    RESULTS,
    machine,
    measure_peak_flops,
    print_table,
    read_json,
    reading_results,
    run_cli,
    sync,
    write_json,
)
from resnet5m.cli.common import seed_list
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data import load_cifar10
from resnet5m.errors import UserError
from resnet5m.evaluation import final_evaluation, predict_logits
from resnet5m.models import build_model
from resnet5m.models.summary import mult_adds_per_image
from resnet5m.runtime import resolve_device, tune_glibc_malloc
from resnet5m.training import Trainer
from resnet5m.training.config import RunConfig, build_config
from resnet5m.training.loop import train_step
from resnet5m.training.recipes import resolve_recipe
from resnet5m.util.stats import mean_std, std_error


def training_flops(trainer: Trainer) -> float:
    """Forward + backward ~= 3 x forward = 6 FLOPs per multiply-add, summed over the steps' crop sizes."""
    cfg, macs = trainer.cfg, {}
    total = 0.0
    for step in range(trainer.total_steps):
        size = (trainer.resolution(step) or (32, ""))[0]
        if size not in macs:
            macs[size] = mult_adds_per_image(build_model(cfg.model), size)
        total += 6.0 * macs[size] * cfg.train.batch_size
    return total


def warm_up(cfg: RunConfig, data) -> float:
    """Untimed: a few steps of a throwaway model at every input size the run will use, so kernel
    selection, allocator growth and (with --compile) compilation happen before the clock starts."""
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="warmup-"))
    try:
        trainer = Trainer(cfg.model_copy(update={"seed": 12345}), data, tmp, out=lambda s: None, progress=False)
        sizes = sorted({stage.size for stage in cfg.train.resolution_schedule} | {32})
        steps = 2 if trainer.device.type == "cpu" else 10
        y = torch.zeros(cfg.train.batch_size, dtype=torch.long, device=trainer.device)
        for size in sizes:
            for _ in range(steps):
                x = torch.rand(cfg.train.batch_size, 3, size, size, device=trainer.device)
                train_step(trainer.parts, 0, x.contiguous(memory_format=torch.channels_last), y)
        predict_logits(trainer.model, data.test_images[:2000], device=trainer.device,
                       batch_size=cfg.train.eval_batch_size, dtype=trainer.dtype)
        sync(trainer.device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def run_seed(cfg: RunConfig, data, seed: int, keep: Path | None = None) -> dict[str, Any]:
    """Train ``cfg`` for ``seed`` and score it once: on the test set, or on the validation split when the
    recipe holds one out (tuning never sees the test set)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tta-bench-{seed}-"))
    try:
        seed_cfg = cfg.model_copy(update={"seed": seed})
        info = machine(resolve_device(cfg.device))
        t0 = time.perf_counter()
        trainer = Trainer(seed_cfg, data, tmp, out=lambda s: None, progress=False)
        sync(trainer.device)
        init_s = time.perf_counter() - t0
        trainer.fit()
        sync(trainer.device)
        on_val = cfg.data.val_size > 0
        images, labels = (trainer.splits.val_x, trainer.splits.val_y) if on_val else \
            (data.test_images, data.test_labels)
        r = final_evaluation(trainer.eval_model(), images, labels, tta=cfg.eval.tta,
                             batch_size=cfg.train.eval_batch_size, device=trainer.device,
                             channels_last=cfg.channels_last, dtype=trainer.dtype)
        if keep is not None:  # the trained weights, for later evaluation (e.g. `resnet5m evaluate`)
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tmp / "last.safetensors", keep / f"seed{seed}.safetensors")
        s, rows = trainer.state, trainer.metrics.rows
        return {"seed": seed, "scored_on": "validation" if on_val else "test", "acc": r["test_acc"],
                "acc_no_tta": r["test_acc_no_tta"], "train_s": s.train_time_s + init_s, "loop_s": s.train_time_s,
                "init_s": init_s, "eval_s": r["eval_time_s"], "tta_s": r["tta_time_s"],
                "images": s.step * cfg.train.batch_size, "epochs": s.epoch,
                "images_per_s": s.step * cfg.train.batch_size / s.train_time_s, "train_flops": training_flops(trainer),
                "data_share": sum(x["data_share"] * x["time_s"] for x in rows) / sum(x["time_s"] for x in rows),
                "curve": [{k: x[k] for k in ("epoch", "train_loss", "train_acc", "time_s")} for x in rows],
                "machine": info}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(results), "scored_on": sorted({r["scored_on"] for r in results})}
    for key in ("acc", "acc_no_tta", "train_s", "tta_s"):
        m, s, n = mean_std(r[key] for r in results)
        out[key] = {"mean": m, "std": s, "se": std_error(s, n)}
    return out


def report(doc: dict[str, Any], quiet: bool = False) -> None:
    """The per-seed table and the mean line (every field read before anything is printed; ``quiet``: read only)."""
    results = doc["results"]
    where = " and ".join(doc["summary"]["scored_on"])
    rows = [[r["seed"], f"{r['acc'] * 100:.2f}", f"{r['acc_no_tta'] * 100:.2f}", f"{r['train_s']:.1f}",
             f"{r['tta_s']:.1f}", f"{r['images_per_s']:.0f}", f"{r['data_share'] * 100:.1f}%",
             f"{r['train_flops'] / r['loop_s'] / doc['peak_flops'] * 100:.0f}%", r["machine"]["cpu"][:24],
             r["machine"]["date"][:10], r["machine"]["commit"]] for r in results]
    s = doc["summary"]
    line = (f"\nmean ± std (standard error) over {s['n']} seeds, scored on {where}: "
            f"{s['acc']['mean'] * 100:.2f} ± {s['acc']['std'] * 100:.2f} ({s['acc']['se'] * 100:.2f}) % with TTA, "
            f"{s['acc_no_tta']['mean'] * 100:.2f} ± {s['acc_no_tta']['std'] * 100:.2f} % without; training "
            f"{s['train_s']['mean']:.1f} ± {s['train_s']['std']:.1f} s, TTA {s['tta_s']['mean']:.1f} s")
    if not quiet:
        print_table(["seed", f"{where} acc % (TTA)", "no TTA %", "train s", "TTA s", "img/s", "aug share",
                     "% of peak", "cpu", "date", "commit"], rows)
        print(line)


def merge(paths: list[Path], out: Path) -> None:
    docs = []
    for p in paths:
        with reading_results(p):
            docs.append(read_json(p))
            docs[-1]["config"]  # noqa: B018 (read here, so a file without it is named)
    if len({json.dumps(d["config"], sort_keys=True) for d in docs}) != 1:
        raise UserError("the files were made with different configs; not merging")
    for p, d in zip(paths, docs):  # each file's whole shape, so a wrong one is named and nothing is written
        with reading_results(p):
            d["overrides"]  # noqa: B018
            report({**d, "summary": summarize(d["results"])}, quiet=True)
    results = [r for d in docs for r in d["results"]]
    seeds = [r["seed"] for r in results]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a seed appears twice ({seeds}); not merging")
    doc = {**docs[0], "results": results, "summary": summarize(results),
           "merged_from": [str(p) for p in paths], "overrides": [d["overrides"] for d in docs]}
    print(f"wrote {write_json(out, doc)}")
    report(doc)


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fast")
    p.add_argument("--seeds", type=seed_list, default=[100, 101, 102])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, help="JSON path (default: results/recipe/time_to_accuracy_<config>.json)")
    p.add_argument("--keep-weights", type=Path, metavar="DIR", help="copy each seed's trained weights here")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="combine these result files into --out")
    args = p.parse_args()
    if args.merge:
        if not args.out:
            raise UserError("--merge needs --out")
        return merge(args.merge, args.out)
    tune_glibc_malloc()
    cfg = build_config(resolve_recipe(args.config), args.overrides)
    out = args.out or RESULTS / "recipe" / f"time_to_accuracy_{Path(args.config).stem}.json"
    data = load_cifar10(cfg.data.path)
    device = resolve_device(cfg.device)
    doc = {"machine": machine(device), "config": cfg.model_dump(mode="json"), "overrides": args.overrides,
           "mult_adds_per_image": mult_adds_per_image(build_model(cfg.model)),
           "clock": "training loop + per-run model set-up incl. whitening init; excludes data loading, one-off "
                    "warm-up/compile, checkpoints, evaluation", "results": []}
    if out.exists():  # continue an interrupted benchmark of the same config
        with reading_results(out):
            old = read_json(out)
            if old["config"] != doc["config"]:
                raise UserError(f"{out} holds results of a different config; choose another --out")
            doc["results"] = list(old["results"])
            done = {r["seed"] for r in doc["results"]}
    else:
        done = set()
    doc["peak_flops"] = measure_peak_flops(device, dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
    doc["warmup_s"] = warm_up(cfg, data)
    for seed in args.seeds:
        if seed in done:
            print(f"  seed {seed}: already in {out}, skipped")
            continue
        r = run_seed(cfg, data, seed, args.keep_weights)
        doc["results"].append(r)
        doc["summary"] = summarize(doc["results"])
        write_json(out, doc)
        print(f"  seed {seed}: {r['acc'] * 100:.2f}% ({r['scored_on']}) in {r['train_s']:.1f}s", flush=True)
    info = doc["machine"]
    print(f"\n{args.config} recipe on {info.get('gpu') or info['cpu']} ({device}, {info['threads']} threads), "
          f"torch {info['torch']}; {doc['mult_adds_per_image'] / 1e6:.1f}M multiply-adds per 32x32 image; "
          f"measured peak {doc['peak_flops'] / 1e9:.0f} GFLOP/s; warm-up {doc['warmup_s']:.1f}s (once)\n")
    report(doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
