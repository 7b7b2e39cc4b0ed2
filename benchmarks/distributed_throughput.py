"""Data-parallel training on one CPU: 2 processes x 1 thread against 1 process x 2 threads (issue #17).

    python benchmarks/distributed_throughput.py [--images 10000] [--epochs 2] [--repeats 2]

Both arms run the unchanged `resnet5m train` command on the fast recipe (at its 32 px phase, which is
most of its time), with the same global batch (1,000) and the same seed; the 2-process arm adds
`--nproc 2 --threads 1` (torchrun under the hood, gloo backend). Arms alternate (A, B, A, B, ...).
Images/s is read from the run's metrics (the last epoch: the first includes one-off kernel selection).

It also prints the communication volume of one step (the gradients DDP all-reduces: 4 bytes per
trainable parameter, plus the BatchNorm buffers it broadcasts) and what a ring all-reduce of that
volume costs at a few interconnect bandwidths, i.e. the scaling one could expect with N GPUs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, machine, print_table, run_cli, write_json
from resnet5m.cli.main import OneLineParser  # noqa: E402
from resnet5m.io.rundir import read_metrics
from resnet5m.models import build_model, count_parameters
from resnet5m.training.config import build_config
from resnet5m.training.recipes import resolve_recipe

ARMS = {"1 process x 2 threads": ["--threads", "2"], "2 processes x 1 thread": ["--nproc", "2", "--threads", "1"]}


def run_arm(extra: list[str], images: int, epochs: int, runs: Path, name: str) -> dict:
    cmd = [sys.executable, "-m", "resnet5m", "train", "--config", "fast", "--runs-dir", str(runs), "--name", name,
           "--no-progress", "--tta", "none", "--epochs", str(epochs), "--seed", "0",
           "--set", f"data.train_subset={images}", "--set", "train.resolution_schedule=[]", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    last = read_metrics(runs / name)[-1]
    return {"images_per_s": images / last["time_s"], "epoch_s": last["time_s"], "wall_s": time.perf_counter() - t0,
            "train_loss": last["train_loss"]}


def comm_volume() -> dict:
    cfg = build_config(resolve_recipe("fast"), [])
    model = build_model(cfg.model)
    grads = count_parameters(model) * 4
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    out = {"grad_bytes": grads, "buffer_bytes": buffers}
    # ring all-reduce: each rank sends and receives 2 (N-1)/N of the volume
    for gbps in (25, 100, 400):
        out[f"allreduce_ms_8gpu_{gbps}GBps"] = 2 * 7 / 8 * grads / (gbps * 1e9) * 1e3
    return out


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "throughput" / "distributed_throughput.json")
    args = p.parse_args()
    doc = {"machine": machine(torch.device("cpu")), "recipe": "fast (32 px phase, batch 1000)", "images": args.images,
           "epochs": args.epochs, "comm": comm_volume(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="dist-bench-") as tmp:
        for i in range(args.repeats):
            for arm, extra in ARMS.items():
                r = run_arm(extra, args.images, args.epochs, Path(tmp), f"{'ab'[list(ARMS).index(arm)]}{i}")
                doc["runs"].append({"arm": arm, "repeat": i, **r})
                print(f"{arm} #{i}: {r['images_per_s']:.1f} img/s (loss {r['train_loss']:.4f})", flush=True)
                write_json(args.out, doc)
    rows = []
    for arm in ARMS:
        xs = [r["images_per_s"] for r in doc["runs"] if r["arm"] == arm]
        rows.append([arm, " / ".join(f"{x:.1f}" for x in xs), f"{sum(xs) / len(xs):.1f}"])
    print_table(["arm", "img/s per repeat", "mean img/s"], rows)
    c = doc["comm"]
    print(f"\ngradients all-reduced per step: {c['grad_bytes'] / 1e6:.1f} MB "
          f"(+{c['buffer_bytes'] / 1e3:.1f} kB buffers); "
          f"ring all-reduce over 8 GPUs: {c['allreduce_ms_8gpu_25GBps']:.2f} ms at 25 GB/s, "
          f"{c['allreduce_ms_8gpu_100GBps']:.2f} ms at 100 GB/s, {c['allreduce_ms_8gpu_400GBps']:.3f} ms at 400 GB/s")
    print(f"wrote {write_json(args.out, doc)}")


if __name__ == "__main__":
    run_cli(main)
