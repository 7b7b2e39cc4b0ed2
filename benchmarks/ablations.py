"""One-at-a-time ablations of the fast recipe, scored on the validation split (the test set is never used).

    python benchmarks/ablations.py                      # run every variant, then print the table
    python benchmarks/ablations.py --only baseline,no_whitening --seeds 0,1
    python benchmarks/ablations.py --table-only         # just tabulate what is in --dir

Every variant is the fast recipe (``configs/fast.yaml``) at a shortened length, trained on 45,000
images with the fixed stratified 5,000-image validation split held out, on tuning seeds (never
reported as results), with the overrides listed below; each is trained by `time_to_accuracy.py`
(same clock, same JSON, one file per variant in --dir). The table gives each variant's validation
accuracy without TTA (mean over seeds), its difference to the baseline with the standard error of
that difference, and the training time.

The 2026-11-23 ablations in results/ablations/2026-11-23-test-scored/ were made before this protocol
(scored on the test set, seed 0, batch 2,000, 4.6 epochs); they are kept as recorded.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from common import RESULTS, print_table, read_json, reading_results, run_cli, write_json
from resnet5m.cli.common import seed_list  # noqa: E402
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.errors import UserError

HERE = Path(__file__).resolve().parent
PROTOCOL = ["data.val_size=5000", "eval.tta=none"]
LENGTH = ["train.epochs=4", "train.resolution_schedule=[{until_epoch: 2, size: 24}]"]

# name -> (what changes, overrides on top of PROTOCOL + LENGTH)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the fast recipe (shortened)", []),
    "no_label_smoothing": ("label smoothing 0.2 -> 0", ["train.label_smoothing=0"]),
    "random_flip": ("alternating flips -> random flips", ["augment.flip.mode=random"]),
    "no_whitening": ("patch-whitening init -> ordinary trainable conv", ["model.whiten=false"]),
    "sgd_not_muon": ("Muon for conv filters -> Nesterov SGD (lr 11.5 per 1024, as airbench94)",
                     ["optimizer.name=sgd", "optimizer.lr=11.5", "optimizer.bias_lr_scale=36.17",
                      "optimizer.head_lr_scale=457.2"]),
    "no_dirac": ("identity (dirac) init of the 3x3 convs -> default init", ["model.dirac_init=false"]),
    "bn_trainable_scale": ("frozen BN scale -> trainable", ["model.bn_frozen_scale=false"]),
    "whiten_bias_never_frozen": ("whitening bias trained throughout (not frozen after 3 epochs)",
                                 ["model.whiten_bias_epochs=null"]),
    "no_skip": ("projection shortcuts -> none (not residual)", ["model.skip=none"]),
}


def run_variant(name: str, seeds: list[int], folder: Path) -> None:
    cmd = [sys.executable, str(HERE / "time_to_accuracy.py"), "--seeds", ",".join(map(str, seeds)),
           "--out", str(folder / f"{name}.json")]
    for o in PROTOCOL + LENGTH + VARIANTS[name][1]:
        cmd += ["--set", o]
    code = subprocess.run(cmd).returncode
    if code:  # the child printed its own one-line reason; its finished seeds are kept in its --out
        raise UserError(f"variant {name}: time_to_accuracy.py exited {code}; the variants after it were not run")


def accuracies(doc: dict) -> dict[int, float]:
    return {r["seed"]: r["acc_no_tta"] for r in doc["results"]}


def table(folder: Path) -> None:
    if not any((folder / f"{n}.json").exists() for n in VARIANTS):
        raise UserError(f"--dir {folder}: no variant results in it (looked for {', '.join(VARIANTS)} .json)")
    with reading_results(folder):
        tabulate(folder, {n: read_json(folder / f"{n}.json") for n in VARIANTS
                          if (folder / f"{n}.json").exists()})


def tabulate(folder: Path, docs: dict[str, dict]) -> None:
    base = accuracies(docs["baseline"]) if "baseline" in docs else {}
    rows, out = [], {}
    for name, doc in docs.items():
        acc = accuracies(doc)
        diffs = [acc[s] - base[s] for s in acc if s in base]  # paired by seed
        n = len(diffs)
        d = sum(diffs) / n if n else math.nan
        se = math.sqrt(sum((x - d) ** 2 for x in diffs) / (n - 1) / n) if n > 1 else math.nan
        mean = sum(acc.values()) / len(acc)
        secs = doc["summary"]["train_s"]["mean"]
        rows.append([name, f"{mean * 100:.2f}", f"{d * 100:+.2f}", f"{se * 100:.2f}", len(acc), f"{secs:.0f}",
                     VARIANTS[name][0]])
        out[name] = {"change": VARIANTS[name][0], "overrides": VARIANTS[name][1], "val_acc": mean,
                     "delta_points": d * 100, "delta_se_points": se * 100, "seeds": sorted(acc), "train_s": secs}
    print_table(["variant", "val acc %", "vs base", "SE", "seeds", "train s", "change"], rows)
    print(f"wrote {write_json(folder / 'table.json', {'protocol': PROTOCOL, 'length': LENGTH, 'variants': out})}")


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variant names")
    p.add_argument("--seeds", type=seed_list, default=[0, 1], help="tuning seeds (never reported as results)")
    p.add_argument("--dir", type=Path, default=RESULTS / "ablations" / "validation")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not args.table_only:
        for name in names:
            run_variant(name, args.seeds, args.dir)
    table(args.dir)


if __name__ == "__main__":
    run_cli(main)
