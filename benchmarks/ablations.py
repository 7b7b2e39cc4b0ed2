"""One-at-a-time ablations of the fast recipe: each technique switched off (or swapped), one run each.

    python benchmarks/ablations.py                 # run every variant, then print the table
    python benchmarks/ablations.py --only baseline,no_whitening
    python benchmarks/ablations.py --table-only    # just tabulate results/ablation_*.json

Every variant is the fast recipe at its 10-minute length (4.6 epochs, 24 px crops for the first 3) and
at batch 2,000 (the default when the recorded results in BENCHMARKS.md were measured), seed 0, without
test-time augmentation, trained by `time_to_accuracy.py` (same clock, same JSON), with the overrides
listed below. The table gives each variant's test accuracy and training time and the
difference to the baseline row. One seed per row: differences under ~0.3 points are within noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import print_table, write_json

HERE = Path(__file__).resolve().parent
LENGTH = ["train.epochs=4.6", "train.resolution_schedule=[{until_epoch: 3, size: 24}]", "eval.tta=none",
          "train.batch_size=2000"]  # the batch size of the recorded results (the default is now 1,000)

# name -> (what changes, overrides on top of LENGTH)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the fast recipe (10-minute length)", []),
    "no_label_smoothing": ("label smoothing 0.2 -> 0", ["train.label_smoothing=0"]),
    "random_flip": ("alternating flips -> random flips", ["augment.flip.mode=random"]),
    "no_whitening": ("patch-whitening init -> ordinary trainable conv", ["model.whiten=false"]),
    # Same lr for BN biases (416) and head (5258) as the recipe; conv filters get airbench94's 11.5.
    "sgd_not_muon": ("Muon for conv filters -> Nesterov SGD (lr 11.5 per 1024, as airbench94)",
                     ["optimizer.name=sgd", "optimizer.lr=11.5", "optimizer.bias_lr_scale=36.17",
                      "optimizer.head_lr_scale=457.2"]),
    "no_dirac": ("identity (dirac) init of the 2nd conv -> default init", ["model.dirac_init=false"]),
    "bn_trainable_scale": ("frozen BN scale -> trainable", ["model.bn_frozen_scale=false"]),
    "lookahead": ("+ Lookahead (airbench94: every 5 steps, 0.95^5 x progress^3)",
                  ["train.ema={decay: 0.95, every_n_steps: 5, decay_power: 3, lookahead: true}"]),
    "whiten_bias_never_frozen": ("whitening bias trained throughout (not frozen after 3 epochs)",
                                 ["model.whiten_bias_epochs=null"]),
}


def run_variant(name: str, seed: int) -> None:
    cmd = [sys.executable, str(HERE / "time_to_accuracy.py"), "--seeds", str(seed), "--label", f"ablation_{name}"]
    for o in LENGTH + VARIANTS[name][1]:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True)


def load(name: str) -> dict | None:
    path = HERE / "results" / f"ablation_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table() -> None:
    base = load("baseline")
    rows, out = [], {}
    for name, (what, overrides) in VARIANTS.items():
        r = load(name)
        if r is None:
            continue
        acc, secs = r["summary"]["test_acc_no_tta_mean"] * 100, r["summary"]["train_s_mean"]
        d_acc = acc - base["summary"]["test_acc_no_tta_mean"] * 100 if base else float("nan")
        d_s = secs - base["summary"]["train_s_mean"] if base else float("nan")
        rows.append([name, f"{acc:.2f}", f"{d_acc:+.2f}", f"{secs:.0f}", f"{d_s:+.0f}", r["machine"]["commit"], what])
        out[name] = {"change": what, "overrides": overrides, "test_acc": acc / 100, "train_s": secs,
                     "delta_acc_points": d_acc, "delta_train_s": d_s, "commit": r["machine"]["commit"]}
    print_table(["variant", "test acc %", "vs base", "train s", "vs base", "commit", "change"], rows)
    print(f"wrote {write_json('ablations', {'length': LENGTH, 'variants': out})}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variant names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not args.table_only:
        for name in names:
            run_variant(name, args.seed)
    table()


if __name__ == "__main__":
    main()
