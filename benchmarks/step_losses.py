"""Per-step training losses of a few recipes, to check that a refactor does not move results.

    python benchmarks/step_losses.py --out after.json          # record on this commit
    python benchmarks/step_losses.py --compare before.json after.json

Cases: the fast recipe's first two epochs on all 50,000 images (100 steps); the fast recipe for all 10
epochs on a 5,000-image subset (50 steps: through the 24 -> 32 px switch and the whitening-bias freeze);
a small ResNet with EMA, mixup, gradient clipping and warm-up (40 steps). Losses are recorded where
the loss is computed (``F.cross_entropy`` during training), so any loop can be checked the same way.
Compare only files made on the same host: float results differ between CPUs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine, read_json, reading_results, run_cli, write_json
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.data import load_cifar10
from resnet5m.runtime import tune_glibc_malloc
from resnet5m.training.config import build_config
from resnet5m.training.recipes import resolve_recipe

CASES: dict[str, tuple[str, list[str], int]] = {  # name -> (recipe, overrides, steps recorded)
    "fast_full_first2epochs": ("fast", [], 100),
    "fast_subset5000_all": ("fast", ["data.train_subset=5000"], 10**9),
    "standard_tiny": ("standard", ["model={blocks: [1,1], channels: [16,32]}", "data.train_subset=2000",
                                   "data.val_size=500", "train.epochs=2", "train.batch_size=100",
                                   "train.ema={decay: 0.9}", "train.mixup={alpha: 0.2, p: 0.5}",
                                   "train.label_smoothing=0.1", "train.grad_clip=2.0", "schedule.warmup_epochs=0.5"],
                      10**9),
}


class _Enough(Exception):
    pass


def record(cfg, data, max_steps: int) -> list[float]:
    from resnet5m.training import Trainer

    losses: list[float] = []
    original = F.cross_entropy

    def spy(logits, target, *a, **k):
        out = original(logits, target, *a, **k)
        if torch.is_grad_enabled() and logits.requires_grad:
            losses.append(float(out.detach()))
            if len(losses) >= max_steps:
                raise _Enough
        return out

    F.cross_entropy = spy
    try:
        Trainer(cfg, data, Path(tempfile.mkdtemp()), out=lambda s: None, progress=False).fit()
    except _Enough:
        pass
    finally:
        F.cross_entropy = original
    return losses


def compare(a: Path, b: Path) -> None:
    da, db = read_json(a), read_json(b)
    if da["machine"]["cpu"] != db["machine"]["cpu"]:
        print(f"warning: different CPUs ({da['machine']['cpu']} vs {db['machine']['cpu']})")
    worst = 0.0
    for name, la in da["losses"].items():
        lb = db["losses"][name]
        diff = max((abs(x - y) for x, y in zip(la, lb)), default=0.0)
        worst = max(worst, diff if len(la) == len(lb) else float("inf"))
        print(f"{name}: {len(la)} vs {len(lb)} steps, max |difference| {diff:.3g}")
    print("same to within 1e-6" if worst <= 1e-6 else f"DIFFERENT (max {worst:.3g})")


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", type=Path, nargs=2, metavar="JSON")
    args = p.parse_args()
    if args.compare:
        with reading_results(" / ".join(map(str, args.compare))):
            return compare(*args.compare)
    tune_glibc_malloc()
    torch.set_num_threads(2)
    data = load_cifar10()
    losses = {}
    for name, (recipe, overrides, steps) in CASES.items():
        losses[name] = record(build_config(resolve_recipe(recipe), overrides), data, steps)
        print(f"{name}: {len(losses[name])} steps, first {losses[name][:2]}, last {losses[name][-2:]}", flush=True)
    print(f"wrote {write_json(args.out, {'machine': machine(torch.device('cpu')), 'losses': losses})}")


if __name__ == "__main__":
    run_cli(main)
