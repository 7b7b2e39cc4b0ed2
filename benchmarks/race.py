"""The race: the fast recipe (a) against its non-residual ancestor (b), seed by seed, in one benchmark.

    python benchmarks/race.py [--seeds 100,101,102] [--a fast] [--b airbench94-equivalent]
    python benchmarks/race.py --table-only

For each fresh seed, (a) and (b) train back to back (the pair is the unit: same data, same threads, same
process settings, nothing else running), each on all 50,000 training images, then each is evaluated
once on the test set with and without its TTA. A pair is appended to the JSON only when both runs are
done (a cut loses one pair, not all); running the command again continues with the missing seeds. Every
pair records the CPU model, date and commit it ran on.

Reported per recipe: mean ± std (standard error) test accuracy with and without TTA, training seconds
and TTA seconds; and the ratio of (a)'s time to (b)'s, as the mean of the per-pair ratios, for training
alone and for training + TTA. A time counts only for a recipe whose mean reaches 94.0%.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from common import RESULTS, machine, measure_peak_flops, print_table, read_json, reading_results, run_cli, write_json
from resnet5m.cli.common import positive_int, seed_list
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data import Cifar10, load_cifar10
from resnet5m.errors import UserError
from resnet5m.runtime import resolve_device, tune_glibc_malloc
from resnet5m.training.config import build_config
from resnet5m.training.recipes import resolve_recipe
from resnet5m.util.stats import mean_std, std_error
from time_to_accuracy import run_seed, warm_up

TARGET = 0.94


def stats(values: list[float]) -> dict[str, float]:
    m, s, n = mean_std(values)
    return {"mean": m, "std": s, "se": std_error(s, n), "n": n}


METADATA = ("description", "claimed", "reported", "measured")  # words about a recipe, not the recipe


def recipe_of(doc: dict[str, Any]) -> list[Any]:
    """What must not change between the pairs of one race: both configs (less their metadata) and the slice."""
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in METADATA}  # noqa: E731
    return [strip(doc["config_a"]), strip(doc["config_b"]), doc.get("test_slice")]


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    pairs = doc["pairs"]
    out: dict[str, Any] = {"n_pairs": len(pairs)}
    for side in ("a", "b"):
        rs = [p[side] for p in pairs]
        out[side] = {"recipe": doc[f"recipe_{side}"], "acc": stats([r["acc"] for r in rs]),
                     "acc_no_tta": stats([r["acc_no_tta"] for r in rs]), "train_s": stats([r["train_s"] for r in rs]),
                     "tta_s": stats([r["tta_s"] for r in rs]),
                     "train_plus_tta_s": stats([r["train_s"] + r["tta_s"] for r in rs])}
    out["ratio_train"] = stats([p["a"]["train_s"] / p["b"]["train_s"] for p in pairs])
    out["ratio_train_plus_tta"] = stats([(p["a"]["train_s"] + p["a"]["tta_s"]) / (p["b"]["train_s"] + p["b"]["tta_s"])
                                         for p in pairs])
    a_ok, b_ok = out["a"]["acc"]["mean"] >= TARGET, out["b"]["acc"]["mean"] >= TARGET
    out["a_reaches_target"], out["b_reaches_target"] = a_ok, b_ok
    out["verdict"] = (
        f"(a) mean {out['a']['acc']['mean'] * 100:.2f}% {'>=' if a_ok else '<'} 94.0%; (b) mean "
        f"{out['b']['acc']['mean'] * 100:.2f}%; time ratio (a)/(b) {out['ratio_train']['mean']:.3f} (training), "
        f"{out['ratio_train_plus_tta']['mean']:.3f} (training + TTA)")
    return out


def report(doc: dict[str, Any]) -> None:
    rows = []
    for p in doc["pairs"]:
        for side in ("a", "b"):
            r = p[side]
            m = p["machine"]
            rows.append([p["seed"], side, doc[f"recipe_{side}"], f"{r['acc'] * 100:.2f}",
                         f"{r['acc_no_tta'] * 100:.2f}", f"{r['train_s']:.1f}", f"{r['tta_s']:.1f}",
                         f"{r['images_per_s']:.0f}", m["cpu"][:20], m["date"][:16], m["commit"]])
    print_table(["seed", "", "recipe", "test % (TTA)", "no TTA %", "train s", "TTA s", "img/s", "cpu", "date",
                 "commit"], rows)
    s = doc["summary"]
    print()
    for side in ("a", "b"):
        x = s[side]
        print(f"({side}) {x['recipe']}: test {x['acc']['mean'] * 100:.2f} ± {x['acc']['std'] * 100:.2f} "
              f"(SE {x['acc']['se'] * 100:.2f}) % with TTA, {x['acc_no_tta']['mean'] * 100:.2f} ± "
              f"{x['acc_no_tta']['std'] * 100:.2f} % without; training {x['train_s']['mean']:.1f} ± "
              f"{x['train_s']['std']:.1f} s, TTA {x['tta_s']['mean']:.1f} s (n={x['acc']['n']})")
    print(f"ratio (a)/(b), mean of per-pair ratios: training {s['ratio_train']['mean']:.3f} ± "
          f"{s['ratio_train']['std']:.3f}; training + TTA {s['ratio_train_plus_tta']['mean']:.3f} ± "
          f"{s['ratio_train_plus_tta']['std']:.3f}")
    print(s["verdict"])


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=seed_list, default=[100, 101, 102])
    p.add_argument("--a", default="fast")
    p.add_argument("--b", default="airbench94-equivalent")
    p.add_argument("--out", type=Path, default=RESULTS / "race" / "race.json")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to both recipes (only for checking the script, e.g. a tiny run)")
    p.add_argument("--test-slice", type=positive_int, default=None, metavar="N",
                   help="score on the first N test images only (only for checking the script: not a race)")
    p.add_argument("--probe-size", type=int, default=4096, metavar="N",
                   help="side of the square fp32 matmul probe recorded with each pair (smaller only for checking "
                        "the script)")
    args = p.parse_args()
    if args.probe_size < 1:
        raise UserError(f"--probe-size {args.probe_size}: must be at least 1")
    if args.table_only:
        with reading_results(args.out):
            return report(read_json(args.out))
    tune_glibc_malloc()
    cfg_a, cfg_b = (build_config(resolve_recipe(r), args.overrides) for r in (args.a, args.b))
    for cfg in (cfg_a, cfg_b):
        if cfg.data.val_size:
            raise UserError("the race trains on all 50,000 images: both recipes need data.val_size 0")
    data = load_cifar10(cfg_a.data.path)
    if args.test_slice:
        n = args.test_slice
        data = Cifar10(data.train_images, data.train_labels, data.test_images[:n], data.test_labels[:n], "slice")
    device = resolve_device(cfg_a.device)
    doc = {"recipe_a": args.a, "recipe_b": args.b, "overrides": args.overrides,
           "config_a": cfg_a.model_dump(mode="json"), "config_b": cfg_b.model_dump(mode="json"),
           "clock": "training loop + per-run model set-up incl. whitening init; excludes data loading, the untimed "
                    "warm-up before each run, checkpoints, evaluation",
           "test_slice": args.test_slice, "pairs": []}
    if args.out.exists():
        with reading_results(args.out):
            old = read_json(args.out)
            if recipe_of(old) != recipe_of(doc):
                raise UserError(f"{args.out} holds a race of other configs; choose another --out")
            doc["pairs"] = list(old["pairs"])
            done = {pair["seed"] for pair in doc["pairs"]}
    else:
        done = set()
    for seed in args.seeds:
        if seed in done:
            print(f"seed {seed}: already raced, skipped")
            continue
        info = machine(device)
        info["peak_gflops"] = measure_peak_flops(device, n=args.probe_size, dtype=torch.float32) / 1e9
        info["probe_size"] = args.probe_size
        pair = {"seed": seed, "machine": info}
        for side, cfg in (("a", cfg_a), ("b", cfg_b)):
            warm_up(cfg, data)  # untimed: kernel selection and allocator growth for this recipe's shapes
            pair[side] = run_seed(cfg, data, seed)
            print(f"seed {seed} ({side}) {doc[f'recipe_{side}']}: {pair[side]['acc'] * 100:.2f}% in "
                  f"{pair[side]['train_s']:.1f}s (+{pair[side]['tta_s']:.1f}s TTA)", flush=True)
        doc["pairs"].append(pair)
        doc["summary"] = summary(doc)
        write_json(args.out, doc)
    report(doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
