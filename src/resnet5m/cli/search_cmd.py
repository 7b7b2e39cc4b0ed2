"""``resnet5m search``: an Optuna study over a space file (resumable, multi-worker), then its report;
``--final`` retrains the best trial on all training images and tests it once per seed."""

from __future__ import annotations

import argparse

from resnet5m.cli.common import seed_list
from resnet5m.search.runner import (
    FINAL_SEEDS,
    SearchInterrupted,
    SearchOptions,
    report,
    run_final,
    run_search,
)
from resnet5m.search.space import PRUNERS, load_space
from resnet5m.search.storage import HEARTBEAT_S
from resnet5m.training.checkpoint import TrainingInterrupted


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search hyperparameters/architectures under the budget with Optuna (validation only)",
        description="Run (or continue) an Optuna study over a space file. Trials are trained without the test "
                    "set and scored on the validation split; over-budget models are never trained. Running the "
                    "same command again continues the study. See docs/search.md.")
    p.add_argument("space", metavar="SPACE", help="space YAML, or a name in configs/ (e.g. search/bhat2023)")
    p.add_argument("--trials", type=int,
                   help="finished trials the study should hold, all workers together (default 20; with --final "
                        "alone, none are added: the best of those finished is retrained); a second run with a "
                        "larger number extends the study")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RUNS_DIR/STUDY/study.db), "
                                     "e.g. postgresql://user@host:5432/db")
    p.add_argument("--study", help="study name and folder (default: the space file's name)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--objectives", help="val_acc (default), val_acc,params or val_acc,train_s")
    p.add_argument("--pruner", choices=PRUNERS, help="median (default), hyperband or none")
    p.add_argument("--runs-dir", default="runs", help="the study folder is RUNS_DIR/STUDY (default: runs)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: CPU cores // workers)")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_S,
                   help=f"seconds between a running trial's heartbeats; a trial silent for 3x this is failed and "
                        f"retried (default {HEARTBEAT_S})")
    p.add_argument("--final", action="store_true",
                   help="after the search, retrain the best trial on all 50,000 training images and test it")
    p.add_argument("--seeds", type=seed_list, default=FINAL_SEEDS,
                   help=f"--final: fresh seeds (default {','.join(map(str, FINAL_SEEDS))})")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--final only: change the retrained config, e.g. --set train.epochs=30")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch lines")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the parent for its worker processes
    p.set_defaults(func=run_search_cmd)


def run_search_cmd(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    trials = args.trials if args.trials is not None else None if args.final else 20  # --final alone: no new trial
    opts = SearchOptions(
        trials=trials, workers=args.workers, storage=args.storage, study=args.study, timeout=args.timeout,
        objectives=[o.strip() for o in args.objectives.split(",")] if args.objectives else None,
        pruner=args.pruner, runs_dir=args.runs_dir, threads=args.threads, heartbeat=args.heartbeat,
        final=args.final, seeds=args.seeds, final_overrides=args.overrides, progress=not args.no_progress)
    try:
        setup, code = run_search(space, opts, worker=args.worker)
    except SearchInterrupted as exc:
        print(f"resnet5m: {exc}")
        return 130
    if args.worker is not None:
        return 0
    report(setup)
    if code:
        return code
    if args.final:
        try:
            run_final(setup, opts)
        except TrainingInterrupted as exc:
            print(f"resnet5m: {exc} (or re-run the same search --final command)")
            return 130
        report(setup)
    return 0
