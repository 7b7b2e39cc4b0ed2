"""``resnet5m train``: a recipe (default: the fast one) + YAML + flags + --set overrides."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from resnet5m.cli.common import add_model_arguments, int_between, model_overrides, positive_int, seed_list
from resnet5m.data.sources import load_cifar10
from resnet5m.errors import UserError
from resnet5m.evaluation.inference import TTA_MODES
from resnet5m.io import rundir
from resnet5m.models.budget import check_budget_before_building
from resnet5m.models.registry import build_model, resolve_model_config
from resnet5m.runtime import distributed
from resnet5m.training.checkpoint import TrainingInterrupted
from resnet5m.training.config import (
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    build_config,
    config_to_yaml,
    load_config_file,
    shortening_note,
    validate_config,
)
from resnet5m.training.recipes import DEFAULT_RECIPE, STANDARD_RECIPE, list_recipes, resolve_recipe
from resnet5m.training.run import train_run, train_seeds
from resnet5m.util.validation import choices

# flag -> dotted config key
_FLAG_KEYS = {
    "epochs": "train.epochs", "batch_size": "train.batch_size", "label_smoothing": "train.label_smoothing",
    "lr": "optimizer.lr", "optimizer": "optimizer.name", "weight_decay": "optimizer.weight_decay",
    "momentum": "optimizer.momentum", "schedule": "schedule.name", "warmup_epochs": "schedule.warmup_epochs",
    "seed": "seed", "val_size": "data.val_size", "train_subset": "data.train_subset", "data": "data.path",
    "device": "device", "precision": "precision", "tta": "eval.tta", "name": "name", "threads": "threads",
    "budget": "budget", "init_from": "train.init_from",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (default: the fast recipe)",
                       description="Train a run. With no arguments, runs the fast recipe (configs/fast.yaml); "
                                   "with --model/--blocks but no --config, the conventional configs/standard.yaml.")
    p.add_argument("--config", "-c", help=f"recipe name or YAML file (default: {DEFAULT_RECIPE}); "
                                          f"recipes: {', '.join(list_recipes())}")
    p.add_argument("--model", "-m", help="model preset or model YAML (replaces the recipe's model; without "
                                         "--config the standard recipe is used)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optimizer.lr=0.01 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    p.add_argument("--runs-dir", default="runs", help="where run directories are created (default: runs)")
    p.add_argument("--seeds", type=seed_list, help="repeat over seeds, e.g. 0,1,2, and report mean ± std")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / periodic lines")
    p.add_argument("--nproc", type=positive_int, metavar="N",
                   help="train with N processes (runs the same command under torchrun --nproc-per-node N)")
    g = p.add_argument_group("common settings (shortcuts for --set)")
    g.add_argument("--name", help="run directory name (default: a timestamp)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=choices(OptimizerConfig, "name"))
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--schedule", choices=choices(ScheduleConfig, "name"))
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--val-size", type=int, help="validation images held out of training (0: train on all 50k)")
    g.add_argument("--train-subset", type=int, help="train on a stratified subset of this many images")
    g.add_argument("--data", help="CIFAR-10 path (.npz, tarball or extracted folder)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument("--precision", choices=choices(RunConfig, "precision"))
    g.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation at the end")
    g.add_argument("--init-from", metavar="RUN_OR_WEIGHTS", type=lambda s: str(Path(s).absolute()),
                   help="start from these weights (fine-tune, or train on with a new schedule); optimizer and "
                        "schedule start fresh (--resume instead continues a stopped run exactly)")
    g.add_argument("--threads", type=int_between(1, 256), help="CPU threads, 1-256 (default: torch's choice)")
    g.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--sync-batchnorm", action="store_true", default=None,
                   help="with several processes: BatchNorm statistics over the global batch")
    add_model_arguments(p)
    p.set_defaults(func=run_train)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def config_from_args(args: argparse.Namespace) -> RunConfig:
    extra: dict[str, Any] = {}
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None and not (flag == "budget" and value == RunConfig.model_fields["budget"].default):
            _set(extra, key, value)
    for flag in ("deterministic", "compile", "sync_batchnorm"):
        if getattr(args, flag):
            extra[flag] = True
    if args.allow_over_budget:
        extra["allow_over_budget"] = True
    overrides = model_overrides(args)
    # the fast recipe's hyperparameters are tuned for its own network: a model given without a recipe
    # trains with the conventional one instead
    recipe = args.config or (STANDARD_RECIPE if (args.model or overrides) else DEFAULT_RECIPE)
    config_path = resolve_recipe(recipe)
    if args.model or overrides:  # --model replaces the recipe's model; flags change it
        base = args.model or build_config(config_path).model
        extra["model"] = resolve_model_config(base, overrides).model_dump(mode="json")
    cfg = build_config(config_path, args.overrides, extra)
    note = shortening_note(build_config(config_path, [], {}), cfg)
    # a shortened run is not the recipe that was measured: its config must not carry that measurement
    return cfg.model_copy(update={"shortened": note, "measured": None}) if note and not cfg.shortened else cfg


def run_train(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1:
        return launch(args.nproc)
    progress = not args.no_progress
    d = distributed.from_env()  # torchrun's group, or a single process
    if d.enabled and distributed.restarted() and args.name and (Path(args.runs_dir) / args.name).is_dir():
        # torchrun restarted the group after a failure: continue the run from its last checkpoint
        return _resume(Path(args.runs_dir) / args.name, args, progress, d, check_flags=False)
    if args.resume:
        return _resume(Path(args.resume), args, progress, d)
    cfg = config_from_args(args)
    check_budget_before_building(lambda: build_model(cfg.model), cfg.budget, cfg.allow_over_budget,
                                 name=f"model ({cfg.model.family})")
    rundir.check_root(args.runs_dir)
    if d.enabled:
        distributed.agree(d, "config", config_to_yaml(cfg))
        if distributed.max_restarts() > 0 and not cfg.name:
            raise UserError("torchrun --max-restarts needs --name, so that a restarted group finds its run")
    data = distributed.all_or_none(d, load_cifar10, cfg.data.path, download=cfg.data.download)
    run_dir = Path(d.broadcast(str(rundir.new_run_dir(args.runs_dir, cfg.name)) if d.is_main else None))
    try:
        if args.seeds:
            if d.is_main:
                rundir.write_config(run_dir, config_to_yaml(cfg))
                rundir.write_seeds(run_dir, args.seeds)
            train_seeds(cfg, data, run_dir, args.seeds, progress=progress)
        else:
            train_run(cfg, data, run_dir, progress=progress)
    except TrainingInterrupted as exc:
        if d.is_main:
            print(f"resnet5m: {exc}")
        return 130
    except BaseException:  # rejected, interrupted or failed before its first epoch: leave no directory
        if d.is_main:
            discard_unstarted(run_dir)
        raise
    return 0


def launch(nproc: int, argv: list[str] | None = None) -> int:
    """``resnet5m train --nproc N ...``: the same command under torchrun's launcher with N local processes.
    Rank 0 reports any failure in one line; the launcher's own failure report is not repeated."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    limit = max(os.cpu_count() or 1, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if nproc > limit:  # each process is a full training process (and torchrun writes files per process)
        raise UserError(f"--nproc {nproc}: at most {limit} on this machine (its CPU cores or GPUs, whichever "
                        "is more)")
    rest, skip = [], False
    for a in (sys.argv[1:] if argv is None else argv):
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    for name in list(logging.root.manager.loggerDict):  # rank 0 speaks; the launcher need not (each of its
        if name.startswith(("torch.distributed.run", "torch.distributed.elastic")):  # loggers sets its own level)
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun's per-launch files (its log and error files) go to a folder removed when the launch ends
    with tempfile.TemporaryDirectory(prefix="resnet5m-torchrun-") as logs:
        try:
            run(parse_args(["--nproc-per-node", str(nproc), "--standalone", "--log-dir", logs, "-m", "resnet5m",
                            *rest]))
        except ChildFailedError as exc:
            codes = sorted((f.local_rank, f.exitcode) for f in exc.failures.values())
            return next((code for _, code in codes if code > 0), 1)  # a rank's own exit code, not a SIGTERM
        except SignalException:  # SIGTERM/SIGINT to the launcher: the ranks checkpointed; rank 0 has said so
            return 130
    return 0


def discard_unstarted(run_dir: Path) -> None:
    """A run rejected before its first step (e.g. batch larger than the data, no such device) leaves no
    directory behind, so the same --name can be used again."""
    if not rundir.has_started(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)


def _resume(run_dir: Path, args: argparse.Namespace, progress: bool, d: distributed.Dist,
            check_flags: bool = True) -> int:
    runtime = ("threads", "device")  # may differ between the original process and the resumed one
    given = [f"--{f.replace('_', '-')}" for f in (*_FLAG_KEYS, "config", "model")
             if f not in runtime and getattr(args, f, None) is not None
             and not (f == "budget" and args.budget == RunConfig.model_fields["budget"].default)]
    given += (["--set"] if args.overrides else []) + (["--seeds"] if args.seeds else [])
    given += [f"--{k.replace('_', '-')}" for k in model_overrides(args)]  # the model is the saved one
    given += [f"--{f.replace('_', '-')}" for f in ("deterministic", "compile", "sync_batchnorm", "allow_over_budget")
              if getattr(args, f, None)]
    if given and check_flags:
        raise UserError(f"--resume continues a run with its saved config; drop {', '.join(given)}")
    cfg_file = run_dir / rundir.CONFIG
    if not cfg_file.is_file():
        raise UserError(f"{run_dir}: not a run directory (no {rundir.CONFIG})")
    cfg = validate_config(load_config_file(cfg_file), where=str(cfg_file))
    cfg = cfg.model_copy(update={k: getattr(args, k) for k in runtime if getattr(args, k) is not None})
    multi = (run_dir / rundir.SEEDS).is_file()
    if not multi and rundir.status(run_dir) == "finished":
        raise UserError(f"{run_dir}: this run already finished ({rundir.RESULTS} exists)")
    if d.enabled:
        distributed.agree(d, "config", config_to_yaml(cfg))
    data = distributed.all_or_none(d, load_cifar10, cfg.data.path, download=cfg.data.download)
    try:
        if multi:
            train_seeds(cfg, data, run_dir, rundir.read_seeds(run_dir), progress=progress)
        else:
            train_run(cfg, data, run_dir, progress=progress)
    except TrainingInterrupted as exc:
        if d.is_main:
            print(f"resnet5m: {exc}")
        return 130
    return 0
