"""``resnet5m search``: an Optuna study over a space file, trial by trial, in one or several worker processes.

Each trial samples a config, builds its model and checks the parameter budget *before* training (an
over-budget or invalid config is never trained: it is recorded and reported to the sampler as infeasible),
then trains on the training split with ``test=False`` and is scored on the validation split, reporting
each epoch's validation accuracy to the pruner. The test set is only used by ``--final``.

Threads: each of K workers runs ``max(1, cores // K)`` torch threads (``cores`` = the CPUs this process
may use), unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet5m.data.cifar10 import Cifar10
from resnet5m.data.sources import load_cifar10
from resnet5m.errors import UserError
from resnet5m.io import rundir
from resnet5m.io.yamlfile import read_yaml
from resnet5m.models.budget import count_parameters
from resnet5m.models.registry import build_model
from resnet5m.reporting.search_report import (
    SEARCH_FILE,
    best_trial,
    build_search_report,
    trial_records,
)
from resnet5m.search.space import DIRECTIONS, Space, check_objectives, config_dict, suggest
from resnet5m.search.storage import HEARTBEAT_S, default_url, display_url, open_storage, quiet_optuna
from resnet5m.training.checkpoint import TrainingInterrupted
from resnet5m.training.config import (
    RECIPE_METADATA,
    RunConfig,
    apply_overrides,
    config_to_yaml,
    load_config_file,
    shortening_note,
    validate_config,
)
from resnet5m.training.run import train_run, train_seeds
from resnet5m.training.trainer import NonFiniteLoss

Printer = Callable[[str], None]
FINAL_SEEDS = [100, 101, 102]
TRIALS_DIR = "trials"
FINAL_DIR = "final"
CONSTRAINT = "budget"  # the one Optuna constraint: params - budget (> 0 infeasible), 1.0 for an invalid config


class SearchInterrupted(Exception):
    """Ctrl-C / SIGTERM stopped a trial after writing its checkpoint; the trial is queued again."""


@dataclass
class SearchOptions:
    trials: int | None = 20  # None: run no new trial (``--final`` alone: retrain the best of those finished)
    workers: int = 1
    storage: str | None = None
    study: str | None = None
    timeout: float | None = None
    objectives: list[str] | None = None
    pruner: str | None = None
    runs_dir: str = "runs"
    threads: int | None = None
    heartbeat: int = HEARTBEAT_S
    final: bool = False
    seeds: list[int] = field(default_factory=lambda: list(FINAL_SEEDS))
    final_overrides: list[str] = field(default_factory=list)
    progress: bool = False


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, threads: int | None = None, cores: int | None = None) -> int:
    """Torch threads per worker: ``threads`` if given, else the cores shared out evenly (at least 1)."""
    return threads if threads else max(1, (cores or cpu_cores()) // max(1, workers))


# --- the study ---------------------------------------------------------------------------------------

@dataclass
class StudySetup:
    space: Space
    name: str
    dir: Path
    url: str
    objectives: list[str]
    pruner: str
    heartbeat: int = HEARTBEAT_S

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1


def study_name(space: Space, name: str | None) -> str:
    name = name or space.path.stem
    rundir.check_name(name)
    return name


def setup_study(space: Space, opts: SearchOptions, out: Printer = print) -> StudySetup:
    """Create (or check and reuse) the study folder and ``search.json``; nothing is trained yet."""
    name = study_name(space, opts.study)
    study_dir = Path(opts.runs_dir) / name
    if opts.trials is None and not (study_dir / SEARCH_FILE).is_file():  # --final alone: nothing to retrain
        raise UserError(f"study {name} has no finished trials yet (no {study_dir / SEARCH_FILE}); run the search "
                        "first (--trials N)")
    try:
        objectives = check_objectives(opts.objectives or list(space.spec.objectives))
    except ValueError as exc:
        raise UserError(f"--objectives: {exc}") from None
    if opts.storage is not None:  # a bad URL, missing driver or unreachable server fails before anything is written
        open_storage(opts.storage, heartbeat_s=opts.heartbeat, grace_s=3 * opts.heartbeat).engine.dispose()
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{study_dir}: cannot create ({exc.strerror or exc})") from None
    pruner = opts.pruner or space.spec.pruner.name
    if len(objectives) > 1 and pruner != "none":
        out(f"note: pruning is off: Optuna cannot prune multi-objective studies ({','.join(objectives)})")
        pruner = "none"
    url = opts.storage or default_url(study_dir)
    meta_file = study_dir / SEARCH_FILE
    meta = {"name": name, "space_file": str(space.path), "base": space.spec.base, "objectives": objectives,
            "directions": [DIRECTIONS[o] for o in objectives], "pruner": pruner,
            "storage": "default" if opts.storage is None else display_url(url),
            "fingerprint": json.loads(space.fingerprint()), "budget": space.base_cfg.budget,
            "val_size": space.base_cfg.data.val_size}
    if meta_file.exists():
        old = rundir.read_json(meta_file, "search study")
        for key, what in (("fingerprint", "searched keys or ranges"), ("objectives", "objectives"),
                          ("base", "base recipe")):
            if old.get(key) != meta[key]:
                raise UserError(f"{study_dir}: this study was started with different {what}; give another "
                                f"--study name (or --runs-dir) for a new study")
        meta["created"] = old.get("created")
    meta["created"] = meta.get("created") or time.strftime("%Y-%m-%d %H:%M:%S")
    rundir.write_json(meta_file, meta)
    space_copy = study_dir / "space.yaml"
    if not space_copy.exists():
        shutil.copyfile(space.path, space_copy)
    return StudySetup(space, name, study_dir, url, objectives, pruner, opts.heartbeat)


def make_sampler(setup: StudySetup, worker: int = 0, existing: int = 0) -> Any:
    """TPE (one objective) or NSGA-II (two). A seeded sampler is offset by the worker index and by the
    trials the study already holds, so neither a second worker nor a continued study replays samples."""
    import optuna

    s = setup.space.spec.sampler
    seed = None if s.seed is None else (s.seed + 1000 * worker + 7919 * existing) % 2**32  # Optuna's range
    if setup.multi:
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, seed=seed)


def make_pruner(setup: StudySetup) -> Any:
    import optuna

    p = setup.space.spec.pruner
    if setup.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if setup.pruner == "hyperband":
        epochs = math.ceil(setup.space.base_cfg.train.epochs)
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=max(epochs, p.min_resource),
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(setup: StudySetup, worker: int = 0) -> Any:
    import optuna

    storage = open_storage(setup.url, heartbeat_s=setup.heartbeat, grace_s=3 * setup.heartbeat)
    try:
        study = optuna.create_study(storage=storage, sampler=make_sampler(setup, worker), pruner=make_pruner(setup),
                                    study_name=setup.name, directions=[DIRECTIONS[o] for o in setup.objectives],
                                    load_if_exists=True)
    except ValueError as exc:  # e.g. the stored study has other directions
        raise UserError(f"study {setup.name} in {display_url(setup.url)}: {exc}") from None
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = make_sampler(setup, worker, existing)
    return study


# --- one trial ---------------------------------------------------------------------------------------

def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / TRIALS_DIR / f"trial-{number}"


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values))


def _infeasible(objectives: list[str], params: int | None) -> float | tuple[float, ...]:
    """What an untrained (over-budget or invalid) trial reports: worst accuracy, and its size / no time."""
    extra = {"params": float(params) if params is not None else math.inf, "train_s": math.inf}
    vals = (0.0, *[extra[o] for o in objectives[1:]])
    return vals[0] if len(vals) == 1 else vals


class Objective:
    """The function Optuna calls once per trial."""

    def __init__(self, setup: StudySetup, data: Cifar10, study: Any, threads: int, out: Printer,
                 verbose: bool = False) -> None:
        self.setup, self.data, self.study, self.threads, self.out = setup, data, study, threads, out
        self.verbose = verbose
        self.current: int | None = None

    def __call__(self, trial: Any) -> float | tuple[float, ...]:
        import optuna

        setup, n = self.setup, trial.number
        self.current = n
        values, stages = suggest(trial, setup.space)
        trial.set_user_attr("values", _jsonable({**({"stages": stages} if stages is not None else {}), **values}))
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
        data = config_dict(setup.space, values, stages)
        data["name"] = f"{setup.name}-trial-{n}"
        data["threads"] = self.threads
        try:
            cfg = validate_config(data, where=f"trial {n}")
            params = count_parameters(build_model(cfg.model))
        except UserError as exc:
            trial.set_user_attr("invalid", str(exc)[:500])
            if CONSTRAINT not in trial.constraints:
                trial.set_constraint(CONSTRAINT, 1.0)
            self.out(f"trial {n}: invalid config, not trained ({str(exc)[:200]})")
            return _infeasible(setup.objectives, None)
        budget = cfg.budget
        trial.set_user_attr("params", params)
        trial.set_user_attr("budget", budget)
        if CONSTRAINT not in trial.constraints:  # a retried trial inherits it
            trial.set_constraint(CONSTRAINT, params - budget)  # feasible when <= 0; samplers learn to stay inside
        if params > budget:
            trial.set_user_attr("over_budget", True)
            self.out(f"trial {n}: {params:,} params, over the budget of {budget:,}: not trained ({shown})")
            return _infeasible(setup.objectives, params)
        trial.set_user_attr("over_budget", False)
        note = shortening_note(setup.space.recipe_cfg, cfg)
        cfg = cfg.model_copy(update={"shortened": note or cfg.shortened})
        run_dir = trial_dir(setup.dir, n)
        self._inherit_checkpoint(trial, run_dir, cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run_dir", str(run_dir.relative_to(setup.dir)))
        self.out(f"trial {n}: {params:,} params, {shown}")
        planned = math.ceil(cfg.train.epochs)

        def on_epoch(row: dict[str, Any]) -> None:
            if setup.multi or row.get("val_acc") is None:
                return
            trial.report(row["val_acc"], row["epoch"])
            if row["epoch"] < planned and trial.should_prune():
                trial.set_user_attr("pruned_epoch", row["epoch"])
                raise optuna.TrialPruned(f"epoch {row['epoch']}: val acc {row['val_acc']:.4f}")

        try:
            results = train_run(cfg, self.data, run_dir, test=False, on_epoch=on_epoch, progress=False,
                                out=self._epoch_printer(n))
        except optuna.TrialPruned as exc:
            self.out(f"trial {n}: pruned at {exc}")
            raise
        except NonFiniteLoss as exc:
            trial.set_user_attr("error", f"diverged: {str(exc)[:300]}")
            self.out(f"trial {n}: diverged ({str(exc)[:160]})")
            raise
        except UserError as exc:
            trial.set_user_attr("error", str(exc)[:500])
            raise
        except TrainingInterrupted:
            trial.set_user_attr("interrupted", True)
            raise
        val_acc, train_s = results["best_val_acc"], results["train_time_s"]
        for key, value in (("val_acc", val_acc), ("train_s", train_s), ("selected_epoch", results["selected_epoch"]),
                           ("epochs", results["epochs"])):
            trial.set_user_attr(key, value)
        self.out(f"trial {n}: val acc {val_acc:.4f} (epoch {results['selected_epoch']}), {train_s:.1f}s training")
        metric = {"val_acc": val_acc, "params": float(params), "train_s": train_s}
        vals = tuple(metric[o] for o in setup.objectives)
        return vals[0] if len(vals) == 1 else vals

    def _epoch_printer(self, n: int) -> Printer:
        """The run's per-epoch lines (with --progress), prefixed by the trial number; others are dropped."""
        if not self.verbose:
            return lambda line: None
        return lambda line: self.out(f"trial {n}:   {line}") if line.startswith("epoch") else None

    def _inherit_checkpoint(self, trial: Any, run_dir: Path, cfg: RunConfig) -> None:
        """A retry of a killed trial continues from that trial's last checkpoint instead of starting over."""
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        if run_dir.exists():
            return
        frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number), None)
        old = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) if frozen is not None else None
        if old is None:
            return
        src = trial_dir(self.setup.dir, old)
        if rundir.status(src) == "resume":
            shutil.copytree(src, run_dir)
            rundir.write_config(run_dir, config_to_yaml(cfg))
            self.out(f"trial {trial.number}: retry of trial {old}, continuing from its checkpoint")


# --- the worker loop ---------------------------------------------------------------------------------

def trial_counts(study: Any) -> dict[str, int]:
    """Finished (complete, pruned, failed by the objective itself), running and waiting trials."""
    from optuna.trial import TrialState

    counts = {"finished": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        own_failure = t.state == TrialState.FAIL and "error" in t.user_attrs  # not a killed worker's
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or own_failure:
            counts["finished"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
    return counts


def run_worker(setup: StudySetup, opts: SearchOptions, data: Cifar10 | None = None, worker: int = 0,
               out: Printer = print, deadline: float | None = None) -> int:
    """Run trials until the study holds ``opts.trials`` finished ones (counting every worker's), the
    deadline passes, or the user interrupts; returns how many trials this worker ran."""
    from optuna.storages import fail_stale_trials

    threads = worker_threads(opts.workers, opts.threads)
    import torch

    torch.set_num_threads(threads)
    study = open_study(setup, worker)
    data = data if data is not None else load_cifar10(setup.space.base_cfg.data.path,
                                                      download=setup.space.base_cfg.data.download)
    objective = Objective(setup, data, study, threads, out, verbose=opts.progress)
    ran = 0
    while deadline is None or time.time() < deadline:
        fail_stale_trials(study)  # a killed worker's trial: FAIL, and a retry is queued
        c = trial_counts(study)
        if c["finished"] >= opts.trials:
            break
        if c["finished"] + c["running"] >= opts.trials and c["waiting"] == 0:
            time.sleep(min(2.0, setup.heartbeat))  # wait: they finish or go stale
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(NonFiniteLoss,))
        except TrainingInterrupted:
            _retry_interrupted(study, objective.current)
            raise SearchInterrupted(f"trial {objective.current} interrupted (checkpoint saved); run the same "
                                    "search command again to continue the study") from None
        ran += 1
    return ran


def _retry_interrupted(study: Any, number: int | None) -> None:
    """A trial stopped by Ctrl-C/SIGTERM (checkpoint written) is queued again, like a killed one."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if number is None:
        return
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is not None and frozen.state.name == "FAIL":
        RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, frozen)


def spawn_workers(setup: StudySetup, opts: SearchOptions, deadline: float | None, out: Printer = print) -> int:
    """Start ``opts.workers`` processes running ``resnet5m search ... --worker I``; wait for all of them.
    Returns 0, or the exit code of the first worker that failed (1 for one killed by a signal)."""
    threads = worker_threads(opts.workers, opts.threads)
    out(f"{opts.workers} workers x {threads} torch threads ({cpu_cores()} cores)")
    procs = []
    for i in range(opts.workers):
        cmd = [sys.executable, "-m", "resnet5m.cli.main", "search", str(setup.space.path), "--worker", str(i),
               "--trials", str(opts.trials), "--workers", str(opts.workers), "--storage", setup.url,
               "--study", setup.name, "--runs-dir", opts.runs_dir, "--objectives", ",".join(setup.objectives),
               "--pruner", setup.pruner, "--threads", str(threads), "--heartbeat", str(opts.heartbeat)]
        if not opts.progress:
            cmd.append("--no-progress")
        if deadline is not None:
            cmd += ["--timeout", f"{max(0.0, deadline - time.time()):.1f}"]
        procs.append(subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    codes = []
    for p in procs:
        while True:
            try:
                codes.append(p.wait())
                break
            except KeyboardInterrupt:  # the workers got the Ctrl-C too: they checkpoint and stop
                continue
    for i, code in enumerate(codes):
        if code != 0:
            out(f"worker {i} exited with code {code}" + (f" (killed by signal {-code})" if code < 0 else ""))
    return next((c if c > 0 else 1 for c in codes if c != 0), 0)


def run_search(space: Space, opts: SearchOptions, *, data: Cifar10 | None = None, out: Printer = print,
               worker: int | None = None) -> tuple[StudySetup, int]:
    """The search phase; with ``worker`` set, only that worker's loop (started by :func:`spawn_workers`).
    Returns the study set-up and an exit code (0, or the worst worker's)."""
    if opts.trials is not None and opts.trials < 1:
        raise UserError("--trials must be at least 1")
    if opts.workers < 1:
        raise UserError("--workers must be at least 1")
    if opts.heartbeat < 1:
        raise UserError("--heartbeat must be at least 1 second")
    quiet_optuna()
    deadline = time.time() + opts.timeout if opts.timeout else None
    if worker is not None:
        setup = setup_study(space, opts, out=lambda line: None)
        run_worker(setup, opts, data, worker, out=lambda line: out(f"[worker {worker}] {line}"), deadline=deadline)
        return setup, 0
    setup = setup_study(space, opts, out=out)
    study = open_study(setup)  # created once here, so workers never race to create it
    before = trial_counts(study)["finished"]
    if opts.trials is None:  # no new trial: the study as it stands
        if not before:
            raise UserError(f"study {setup.name} has no finished trials yet; run the search first (--trials N)")
        opts = dataclasses.replace(opts, trials=before)
    out(f"study {setup.name} in {display_url(setup.url)}: {before} of {opts.trials} trials finished; "
        f"objective {' + '.join(setup.objectives)}, pruner {setup.pruner}; study folder {setup.dir}")
    code = 0
    if before < opts.trials:
        if opts.workers == 1:
            run_worker(setup, opts, data, 0, out=out, deadline=deadline)
        else:
            code = spawn_workers(setup, opts, deadline, out=out)
            if code and trial_counts(study)["finished"] >= opts.trials:  # the others finished its trials
                out(f"the study reached its {opts.trials} trials despite the failed worker")
                code = 0
    return setup, code


def report(setup: StudySetup, out: Printer = print) -> dict[str, Any]:
    """Tables, best.yaml, plots and report.html in the study folder; returns the summary counts."""
    study = open_study(setup)
    summary = build_search_report(setup.dir, setup.dir, study=study)
    out(f"trials: {summary['counts_line']}")
    if summary.get("best") is not None:
        b = summary["best"]
        out(f"best: trial {b['number']}, val acc {b['val_acc']:.4f}, {b['params_count']:,} params -> "
            f"{setup.dir / 'best.yaml'}")
    out(f"report: {setup.dir / 'report.html'}")
    return summary


# --- the final, honest test --------------------------------------------------------------------------

def final_config(setup: StudySetup, study: Any, overrides: list[str], threads: int | None) -> tuple[RunConfig, int]:
    """The best trial's config, retrained on all 50,000 training images (no validation split)."""
    best = best_trial(trial_records(study))
    if best is None:
        raise UserError(f"study {setup.name}: no completed trial within the budget yet; nothing to retrain")
    cfg_file = setup.dir / best["run_dir"] / rundir.CONFIG
    data = load_config_file(cfg_file)
    for key in RECIPE_METADATA:  # trials of studies made before this was cleared may still carry the base's
        data.pop(key, None)
    data = apply_overrides(data, ["data.val_size=0", "data.train_subset=null", f"name={setup.name}-final"])
    data["threads"], data["shortened"] = threads, None
    where = f"final retraining of trial {best['number']}"
    full = validate_config(data, where=where)
    cfg = validate_config(apply_overrides(data, overrides), where=where)
    note = shortening_note(full, cfg)  # a --set that trains less than the trial's recipe is marked
    return cfg.model_copy(update={"shortened": note}), best["number"]


def run_final(setup: StudySetup, opts: SearchOptions, data: Cifar10 | None = None,
              out: Printer = print) -> dict[str, Any]:
    """Train the best trial's config once per fresh seed on all training images and test each once."""
    if not opts.seeds:
        raise UserError("--final needs --seeds, e.g. 100,101,102")
    study = open_study(setup)
    cfg, number = final_config(setup, study, opts.final_overrides, worker_threads(1, opts.threads))
    final_dir = setup.dir / FINAL_DIR
    text = config_to_yaml(cfg)
    if (final_dir / rundir.CONFIG).exists() and (final_dir / rundir.CONFIG).read_text() != text:
        old = read_yaml(final_dir / "trial.json", what="final record") if (final_dir / "trial.json").exists() else {}
        raise UserError(f"{final_dir} holds a retraining of another config (trial {old.get('trial', '?')}); the best "
                        f"is now trial {number}: move {final_dir} away to retrain")
    if (final_dir / rundir.SEEDS).exists() and rundir.read_seeds(final_dir) != opts.seeds:
        raise UserError(f"{final_dir} was trained with seeds {rundir.read_seeds(final_dir)}; move it away to use "
                        f"{opts.seeds}")
    final_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(final_dir, text)
    rundir.write_seeds(final_dir, opts.seeds)
    rundir.write_json(final_dir / "trial.json", {"trial": number, "seeds": opts.seeds})
    out(f"final: trial {number}'s config on all {50000 if cfg.data.train_subset is None else cfg.data.train_subset} "
        f"training images (val_size 0), seeds {opts.seeds}; the test set is evaluated once per seed")
    data = data if data is not None else load_cifar10(cfg.data.path, download=cfg.data.download)
    return train_seeds(cfg, data, final_dir, opts.seeds, out=out, progress=opts.progress)
