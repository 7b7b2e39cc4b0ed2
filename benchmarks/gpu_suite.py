"""Everything we want measured on a GPU, as resumable steps of at most ~9 minutes (the device tool's limit
per command is 10): the fast recipe over 10 seeds, strong and max over 3, and every reference recipe at
its full published length; then one table of "reported by the study" against "measured by resnet5m".

    python benchmarks/gpu_suite.py plan                      # the steps and what is done
    python benchmarks/gpu_suite.py run [--budget-s 540]      # run/resume steps in order until the budget is spent
    python benchmarks/gpu_suite.py table                     # reported vs measured (Markdown + JSON)
    python benchmarks/gpu_suite.py run --tiny ...            # the same logic, tiny, on a CPU (tests use this)

On the device machine (see the project guide): run ``../shared/tools/split-cifar10-for-device`` here,
then three calls back to back carrying ``.devdata/p1``, ``.devdata/p2``, ``.devdata/p3``; the third
assembles ``.devdata/cifar10.npz`` from the chunks (this script does it too, checking the SHA-256) and
runs ``python benchmarks/gpu_suite.py run --data .devdata/cifar10.npz --out .devdata/gpu-out --device cuda``.
Run directories live in ``--work`` (default ``.devdata/gpu-runs``, kept on a warm machine between
calls); each finished step writes one small JSON into ``--out`` and appends it to ``--out``/steps.jsonl;
the device tool returns at most 8 files, so copy ``steps.jsonl`` (and a tarball of the runs' metrics)
to ``$OUT``. A run cut by the budget is checkpointed and resumed by the next call on the same machine.
On CUDA one untimed warm-up run comes first; ``--compile`` is off unless asked for (its compile time
would count as training time). The 2026-11-26 H200 results: ``benchmarks/results/gpu/2026-11-26-h200/``.

Seeds 100+ are fresh: no tuning run used them. Every recipe is run exactly as shipped, except the
``--tiny`` setting (a few hundred images, a fraction of an epoch), which only exercises the logic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import machine, write_json  # noqa: E402
from resnet5m.io import rundir  # noqa: E402
from resnet5m.runtime.device import resolve_device  # noqa: E402
from resnet5m.training.checkpoint import TrainingInterrupted  # noqa: E402
from resnet5m.training.config import build_config  # noqa: E402
from resnet5m.training.recipes import resolve_recipe  # noqa: E402
from resnet5m.util.stats import mean_std, std_error  # noqa: E402

TINY = ["data.train_subset=300", "data.val_size=0", "train.epochs=0.3", "train.batch_size=100",
        "train.eval_batch_size=500", "channels_last=false"]


@dataclass(frozen=True)
class Step:
    name: str
    recipe: str  # a recipe name, or studies/<study>:<variant>
    seed: int
    group: str  # rows of the table
    target: str = ""


def steps(tiny: bool) -> list[Step]:
    fast_seeds = range(100, 102 if tiny else 110)
    out = [Step(f"fast-{s}", "fast", s, "fast", ">= 94.0% mean in <= 2.5 s") for s in fast_seeds]
    for rung, target in (("strong", ">= 95.0% in <= 8 s"), ("max", ">= 96.0% mean in <= 60 s")):
        out += [Step(f"{rung}-{s}", rung, s, rung, target) for s in range(100, 101 if tiny else 103)]
    refs = ["studies/bhat2023:sgd-lr0.005", "studies/bhat2023:adam-lr0.005", "studies/bhat2023:sgd-lr0.01",
            "studies/bhat2023:sgd-lr0.005-433", "reddy2024", "mehta2023", "kunkolienker2024", "li2024"]
    for ref in refs[:2] if tiny else refs:
        name = ref.split(":")[-1] if ":" in ref else ref
        out.append(Step(f"ref-{name}", ref, 100, name))
    return out


def config_of(step: Step, tiny: bool, device: str, compile: bool = False, extra: tuple[str, ...] = ()):
    """The step's run config; ``compile`` is a runtime setting (the recipe itself is unchanged). Off by
    default: its compile time would fall inside the first epoch's training time. ``extra`` overrides
    (``--set``) change the recipe: every result written records them."""
    overrides = [f"seed={step.seed}", f"device={device}"] + (TINY if tiny else [])
    overrides += (["compile=true"] if compile else []) + list(extra)
    if ":" in step.recipe:  # a study variant, resolved exactly as `resnet5m study` does
        from resnet5m.training.study import load_study, variant_configs

        study, path = load_study(step.recipe.split(":")[0])
        return variant_configs(study, path, overrides)[step.recipe.split(":")[1]]
    return build_config(resolve_recipe(step.recipe), overrides)


def assemble_data(devdata: Path) -> Path | None:
    """``.devdata/cifar10.npz`` from the three moved chunks, checked against its SHA-256 (once)."""
    target = devdata / "cifar10.npz"
    chunks = [devdata / f"p{i + 1}" / f"chunk.{i}" for i in range(3)]
    if not target.exists() and all(c.exists() for c in chunks):
        with open(target, "wb") as out:
            for c in chunks:
                out.write(c.read_bytes())
    if not target.exists():
        return None
    expected = devdata / "p3" / "cifar10.npz.sha256"
    if expected.exists():
        got = hashlib.sha256(target.read_bytes()).hexdigest()
        if got != expected.read_text().split()[0]:
            target.unlink()
            raise SystemExit(f"error: {target}: SHA-256 {got} does not match {expected}; removed")
    return target


def result_path(out: Path, step: Step) -> Path:
    return out / f"{step.name}.json"


def run_step(step: Step, args: argparse.Namespace, data, budget_s: float) -> str:
    from resnet5m.training.run import train_run

    cfg = config_of(step, args.tiny, args.device, args.compile, tuple(args.set))
    run = args.work / step.name
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        results = train_run(cfg, data, run, out=lambda s: None, progress=False, stop_after_s=budget_s)
    except TrainingInterrupted:
        return f"cut at the budget after {time.time() - t0:.0f}s (checkpointed; the next call resumes it)"
    results = {k: v for k, v in results.items() if k not in ("confusion", "per_class_accuracy")}
    doc = {
        "step": step.name, "recipe": step.recipe, "seed": step.seed, "group": step.group, "target": step.target,
        "tiny": args.tiny, "shortened": cfg.shortened, "reported": cfg.reported.model_dump() if cfg.reported else None,
        "machine": machine(resolve_device(cfg.device)), "compile": cfg.compile,
        "overrides": list(args.set), "results": results}
    write_json(result_path(args.out, step), doc)
    with open(args.out / "steps.jsonl", "a") as f:  # every result in one file too (the device tool returns few files)
        f.write(json.dumps(doc) + "\n")
    return f"done: test acc {results['test_acc'] * 100:.2f}% in {results['train_time_s']:.1f}s of training"


def cmd_run(args: argparse.Namespace) -> None:
    from resnet5m.data.cifar10 import Cifar10
    from resnet5m.data.sources import load_cifar10
    from resnet5m.runtime import tune_glibc_malloc

    tune_glibc_malloc()
    data_path = args.data or assemble_data(ROOT / ".devdata")
    data = load_cifar10(data_path)
    if args.tiny:  # a tiny check of the logic: a slice of the test set too
        data = Cifar10(data.train_images, data.train_labels, data.test_images[:500], data.test_labels[:500], "tiny")
    deadline = time.time() + args.budget_s
    if resolve_device(args.device).type == "cuda" and not args.tiny:
        warm_up(args, data)
    for step in steps(args.tiny):
        if result_path(args.out, step).exists():
            continue
        left = deadline - time.time()
        if left < 5:
            print(f"budget spent; the next call continues at {step.name}")
            return
        print(f"{step.name}: {run_step(step, args, data, left)}", flush=True)
    print("all steps done")


def warm_up(args: argparse.Namespace, data) -> None:
    """Once per process on a GPU, before any timed run: the fast recipe on 3,000 training images for its
    full schedule (every resolution), so CUDA's start-up and cuDNN's algorithm search for these shapes fall
    outside the timed runs (as airbench's warm-up run does). Nothing of it is recorded as a result."""
    from resnet5m.training.run import train_run

    t0 = time.time()
    cfg = build_config(resolve_recipe("fast"), ["seed=0", f"device={args.device}", "data.train_subset=3000",
                                                 *(["compile=true"] if args.compile else [])])
    args.work.mkdir(parents=True, exist_ok=True)
    train_run(cfg, data, Path(tempfile.mkdtemp(prefix="warmup-", dir=args.work)), out=lambda s: None, progress=False)
    print(f"warm-up: {time.time() - t0:.1f}s (not a result)", flush=True)


def cmd_plan(args: argparse.Namespace) -> None:
    for step in steps(args.tiny):
        done = result_path(args.out, step).exists()
        run = args.work / step.name
        state = "done" if done else ("in progress" if rundir.status(run) == "resume" else "to do")
        print(f"{step.name:<24} {step.recipe:<34} seed {step.seed}  {state}")


def table(args: argparse.Namespace) -> dict[str, Any]:
    rows, out = [], {}
    groups: dict[str, list[dict]] = {}
    for step in steps(args.tiny):
        path = result_path(args.out, step)
        if path.exists():
            groups.setdefault(step.group, []).append(json.loads(path.read_text()))
    for group, docs in groups.items():
        accs = [d["results"]["test_acc"] for d in docs]
        times = [d["results"]["train_time_s"] for d in docs]
        m, s, n = mean_std(accs)
        t, _, _ = mean_std(times)
        reported = docs[0]["reported"]
        rep = " / ".join(f"{a * 100:.2f}" for a in reported["test_acc"]) if reported else "-"
        gpu = docs[0]["machine"].get("gpu") or docs[0]["machine"]["cpu"]
        entry = {"recipe": docs[0]["recipe"], "n": n, "test_acc_mean": m, "test_acc_std": s,
                 "test_acc_se": std_error(s, n), "train_s_mean": t, "reported_test_acc": reported,
                 "target": docs[0]["target"], "machine": gpu, "tiny": args.tiny}
        out[group] = entry
        rows.append(f"| {group} | {rep} | {m * 100:.2f} ± {s * 100:.2f} (n={n}) | {t:.1f} | {docs[0]['target'] or '-'} "
                    f"| {gpu} |")
    md = ["| recipe | reported by the study (test %) | measured by resnet5m (test %, mean ± std) | train s | "
          "target | machine |", "|---|---|---|---|---|---|", *rows]
    print("\n".join(md))
    write_json(args.out / "table.json", {"rows": out, "tiny": args.tiny})
    (args.out / "table.md").write_text("\n".join(md) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["plan", "run", "table"])
    p.add_argument("--tiny", action="store_true", help="a few hundred images, a fraction of an epoch (tests)")
    p.add_argument("--budget-s", type=float, default=540, help="stop starting/continuing runs after this")
    p.add_argument("--work", type=Path, default=ROOT / ".devdata" / "gpu-runs")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu")
    p.add_argument("--data", type=Path, help="CIFAR-10 (default: .devdata/cifar10.npz, then $RESNET5M_DATA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override every run's config (a shortened or smoke run; recorded in each result)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every run (its compile time then falls inside the first epoch's time)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"plan": cmd_plan, "run": cmd_run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
