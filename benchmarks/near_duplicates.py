"""Does the validation split hold more near-copies of its training images than the test set holds of the
training set? (A split that does rewards memorising more than the test set does, and could rank recipes
differently.) For every validation image, the cosine similarity of its mean-centred pixels to the nearest
of the 45,000 images trained on; for every test image, to the nearest of the 50,000 (and of the same
45,000). Prints the share above several thresholds and writes JSON.

    python benchmarks/near_duplicates.py --split-seeds 0,1,2 \
        --out benchmarks/results/tuning/2026-11-26/near_duplicates.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, run_cli, write_json  # noqa: E402
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data.sources import load_cifar10  # noqa: E402
from resnet5m.data.split import stratified_split  # noqa: E402

THRESHOLDS = (0.90, 0.95, 0.98, 0.99)


def features(images: torch.Tensor) -> torch.Tensor:
    """Mean-centred, unit-length pixel vectors (cosine similarity = dot product)."""
    x = images.float().reshape(len(images), -1)
    return torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1)


def nearest(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """Each query's highest similarity to any reference row (in chunks: bounded memory)."""
    best = torch.full((len(queries),), -2.0)
    for i in range(0, len(reference), chunk):
        best = torch.maximum(best, (queries @ reference[i:i + chunk].T).max(1).values)
    return best


def shares(sim: torch.Tensor) -> dict[str, float]:
    out = {f"share_ge_{t}": float((sim >= t).float().mean()) for t in THRESHOLDS}
    return out | {"median": float(sim.median()), "n": len(sim)}


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="CIFAR-10 (default: $RESNET5M_DATA)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--split-seeds", default="0", help="comma-separated data.split_seed values")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    data = load_cifar10(args.data)
    train, test = features(data.train_images), features(data.test_images)
    rows = {"test_vs_50k": shares(nearest(test, train))}
    for seed in (int(s) for s in args.split_seeds.split(",")):
        train_idx, val_idx = stratified_split(data.train_labels, args.val_size, seed)
        rows[f"split{seed}_val_vs_45k"] = shares(nearest(train[val_idx], train[train_idx]))
        rows[f"split{seed}_test_vs_45k"] = shares(nearest(test, train[train_idx]))
    print(f"{'set':<22}" + "".join(f"{'>= ' + str(t):>9}" for t in THRESHOLDS) + f"{'median':>9}")
    for name, r in rows.items():
        cells = "".join(f"{r[f'share_ge_{t}'] * 100:>8.2f}%" for t in THRESHOLDS)
        print(f"{name:<22}{cells}{r['median']:>9.3f}")
    write_json(args.out, {"machine": machine(torch.device("cpu")), "measure": "cosine of mean-centred pixels",
                          "rows": rows})


if __name__ == "__main__":
    run_cli(main)
