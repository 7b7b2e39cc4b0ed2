"""``resnet5m study`` and ``resnet5m report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet5m.cli.common import check_output_dir, seed_list
from resnet5m.reporting.report import build_report
from resnet5m.reporting.search_report import is_search_dir
from resnet5m.training.checkpoint import TrainingInterrupted
from resnet5m.training.study import run_study


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run every variant of a study (resumable), then write its report")
    p.add_argument("study", metavar="STUDY", help="study YAML, or a name in configs/studies (e.g. studies/bhat2023)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--epochs", type=float, help="shorten every variant to this many epochs (quick version)")
    p.add_argument("--train-subset", type=int, help="train every variant on this many images (quick version)")
    p.add_argument("--seeds", type=seed_list, help="override the study's seeds, e.g. 0,1,2")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_study_cmd)

    p = sub.add_parser("report", help="tables, curves, confusion matrix and report.html for runs or a study")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_STUDY")
    p.add_argument("-o", "--output", "--out", dest="output", help="output folder (default: <first path>/report)")
    p.add_argument("--storage", help="a search folder's Optuna storage URL, to read its trials live (e.g. the "
                                     "PostgreSQL URL the search used); default: the folder's study.db, else its "
                                     "trials.json snapshot (the URL in search.json is never opened)")
    p.set_defaults(func=run_report_cmd)


def run_study_cmd(args: argparse.Namespace) -> int:
    try:
        root = run_study(args.study, args.runs_dir, epochs=args.epochs, train_subset=args.train_subset,
                         seeds=args.seeds, overrides=args.overrides, progress=not args.no_progress)
    except TrainingInterrupted as exc:
        print(f"resnet5m: {exc} (or re-run the same study command)")
        return 130
    out = build_report([root], root / "report")
    print(f"report: {out / 'report.html'}")
    return 0


def run_report_cmd(args: argparse.Namespace) -> int:
    out = check_output_dir(Path(args.output) if args.output else Path(args.paths[0]) / "report")
    build_report(args.paths, out, storage=args.storage)
    if len(args.paths) == 1 and is_search_dir(args.paths[0]):
        print(f"wrote {out}/trials.md, trials.csv, best.yaml, plots/, report.html")
    else:
        print(f"wrote {out}/results.md, results.csv, curves/, curves_overlay.png, confusion_best.png, report.html")
    return 0
