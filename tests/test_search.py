"""``resnet5m search``: a tiny Optuna study on the real CIFAR-10 (SQLite), the budget as a hard constraint,
pruning, continuation, honesty (trials never see the test set), --final, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from resnet5m.data.cifar10 import Cifar10
from resnet5m.errors import UserError
from resnet5m.io import rundir
from resnet5m.reporting.search_report import build_search_report, is_search_dir
from resnet5m.search.runner import SearchOptions, run_final, run_search, trial_dir, worker_threads
from resnet5m.search.space import config_dict, decode_choice, encode_choice, load_space, set_key
from resnet5m.training.config import build_config, validate_config
from resnet5m.training.recipes import resolve_recipe

SPACE = {
    "description": "tiny test space",
    "base": "standard",
    "set": {"model": {"blocks": [1, 1], "channels": [8, 16]}, "data.val_size": 500, "data.train_subset": 2000,
            "train.epochs": 2, "train.batch_size": 100, "train.eval_batch_size": 2000, "budget": 20000},
    "params": {
        "optimizer.lr": {"choices": [0.05, 0.00001]},  # 1e-5 stays near chance: the pruner's target
        "model.channels": {"choices": [[8, 16], [16, 32], [64, 128]]},  # [64, 128]: 307k params, over budget
    },
    # seed 10 samples good, good, over budget, bad, good, bad, good: pruning and the budget both show
    "sampler": {"seed": 10},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
}
TRIALS = 6


def write_space(path: Path, space: dict | None = None, **changes) -> Path:
    data = json.loads(json.dumps(space or SPACE))
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def poisoned(cifar: Cifar10) -> Cifar10:
    g = torch.Generator().manual_seed(0)
    return Cifar10(cifar.train_images, cifar.train_labels, cifar.test_images,
                   torch.randint(0, 10, (len(cifar.test_labels),), generator=g), "poisoned")


def load(study_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def comparable(t: optuna.trial.FrozenTrial) -> tuple:
    return (t.number, t.state.name, t.params, t.user_attrs.get("val_acc"), t.user_attrs.get("params"),
            {k: round(v, 6) for k, v in t.intermediate_values.items()})


@pytest.fixture(scope="module")
def tiny_study(cifar, tmp_path_factory):
    """One tiny search on CIFAR-10 with poisoned test labels, shared by the tests below."""
    root = tmp_path_factory.mktemp("search")
    space = load_space(write_space(root / "tiny.yaml"))
    opts = SearchOptions(trials=TRIALS, runs_dir=str(root / "runs"), threads=1)
    setup, code = run_search(space, opts, data=poisoned(cifar), out=lambda line: None)
    assert code == 0
    build_search_report(setup.dir)
    return root, setup, opts


def test_trials_recorded_budget_and_pruning(tiny_study):
    root, setup, _ = tiny_study
    trials = load(setup.dir, "tiny").get_trials()
    assert [t.number for t in trials] == list(range(TRIALS))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    over = [t for t in trials if t.user_attrs.get("over_budget")]
    assert over, "the space should have sampled the over-budget width"
    for t in over:  # never trained: no run directory, no metrics; infeasible for the sampler
        assert t.user_attrs["params"] > 20000 and t.state.name == "COMPLETE"
        assert not trial_dir(setup.dir, t.number).exists()
        assert t.system_attrs["constraints:budget"] > 0
    assert any(t.state.name == "PRUNED" for t in trials), [comparable(t) for t in trials]
    for t in trials:
        if t.state.name == "PRUNED":
            assert len(rundir.read_metrics(trial_dir(setup.dir, t.number))) < 2
            assert not (trial_dir(setup.dir, t.number) / rundir.RESULTS).exists()
    done = [t for t in trials if t.state.name == "COMPLETE" and not t.user_attrs.get("over_budget")]
    assert done
    for t in done:  # the stored objective is the run's best validation accuracy; no test number exists
        results = rundir.read_results(trial_dir(setup.dir, t.number))
        assert results["best_val_acc"] == t.value == t.user_attrs["val_acc"]
        assert results["test_acc"] is None and results["confusion"] is None
        assert results["val_images"] == 500 and t.user_attrs["params"] <= 20000


def test_best_config_and_report(tiny_study):
    root, setup, _ = tiny_study
    trials = load(setup.dir, "tiny").get_trials()
    best = max((t for t in trials if t.state.name == "COMPLETE" and not t.user_attrs["over_budget"]),
               key=lambda t: t.value)
    cfg = build_config(str(setup.dir / "best.yaml"))
    assert cfg.model.channels == json.loads(best.params["model.channels"])
    assert cfg.optimizer.lr == best.params["optimizer.lr"]
    assert cfg.data.val_size == 500 and cfg.name is None and cfg.threads is None and cfg.shortened is None
    assert f"best trial {best.number} " in cfg.description
    for f in ("trials.csv", "trials.md", "report.html", "trials.json", "plots/pareto.png", "plots/history.png",
              "plots/curves.png", "search.json", "space.yaml"):
        assert (setup.dir / f).is_file(), f
    rows = list(csv.DictReader((setup.dir / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(TRIALS))
    assert sum(r["over_budget"] == "1" for r in rows) == sum(bool(t.user_attrs["over_budget"]) for t in trials)
    page = (setup.dir / "report.html").read_text()
    assert "over budget" in page and "No test-set number" in page and "test acc" not in page
    assert is_search_dir(setup.dir)
    # report into another folder from the snapshot alone (storage gone)
    (setup.dir / "study.db").rename(root / "moved.db")
    try:
        summary = build_search_report(setup.dir, root / "offline")
    finally:
        (root / "moved.db").rename(setup.dir / "study.db")
    assert summary["best"]["number"] == best.number and (root / "offline" / "report.html").is_file()


def test_test_set_untouched_and_rerun_continues(tiny_study, cifar):
    """Trials on clean data equal the poisoned-test-label ones; the same command again extends the study."""
    root, setup, opts = tiny_study
    space = load_space(root / "tiny.yaml")
    clean_opts = SearchOptions(trials=3, runs_dir=str(root / "clean"), threads=1)
    clean_setup, _ = run_search(space, clean_opts, data=cifar, out=lambda line: None)
    clean = load(clean_setup.dir, "tiny").get_trials()
    dirty = load(setup.dir, "tiny").get_trials()[:3]
    assert [comparable(t) for t in clean] == [comparable(t) for t in dirty]

    lines: list[str] = []
    run_search(space, SearchOptions(trials=TRIALS + 1, runs_dir=opts.runs_dir, threads=1), data=poisoned(cifar),
               out=lines.append)
    after = load(setup.dir, "tiny").get_trials()
    assert len(after) == TRIALS + 1 and f"{TRIALS} of {TRIALS + 1} trials finished" in lines[0]
    assert [comparable(t) for t in after[:TRIALS]] == [comparable(t) for t in load(setup.dir, "tiny").get_trials()
                                                       ][:TRIALS]


def test_final_alone_adds_no_trials(tiny_study, cifar, tmp_path):
    """`search --final` without --trials retrains the best of the trials finished, adding none; on a study
    with none finished it says to search first."""
    root, setup, opts = tiny_study
    before = len(load(setup.dir, "tiny").get_trials())
    lines: list[str] = []
    run_search(load_space(root / "tiny.yaml"), SearchOptions(trials=None, runs_dir=opts.runs_dir, threads=1,
                                                             final=True), data=poisoned(cifar), out=lines.append)
    assert len(load(setup.dir, "tiny").get_trials()) == before and f"{before} of {before} trials finished" in lines[0]
    with pytest.raises(UserError, match="has no finished trials yet"):
        run_search(load_space(root / "tiny.yaml"), SearchOptions(trials=None, runs_dir=str(tmp_path), final=True),
                   data=poisoned(cifar), out=lambda line: None)
    assert not any(tmp_path.iterdir())  # nothing created: the study is still free to be set up


def test_final_is_the_only_test_evaluation(tiny_study, cifar):
    root, setup, opts = tiny_study
    final_opts = SearchOptions(trials=TRIALS, runs_dir=opts.runs_dir, threads=1, final=True, seeds=[100],
                               final_overrides=["train.epochs=1", "data.train_subset=2000"])
    summary = run_final(setup, final_opts, data=poisoned(cifar), out=lambda line: None)
    final = setup.dir / "final"
    assert json.loads((final / "summary.json").read_text())["test_acc"]["n"] == 1
    seed_run = rundir.read_results(final / "seed100")
    assert seed_run["val_images"] == 0 and seed_run["seed"] == 100
    assert summary["test_acc"]["mean"] < 0.2  # the poisoned labels show here, and only here
    build_search_report(setup.dir)
    assert "Final (trial" in (setup.dir / "trials.md").read_text()


def test_multi_objective_disables_pruning(cifar, tmp_path):
    space = load_space(write_space(tmp_path / "mo.yaml", objectives=["val_acc", "params"],
                                   sampler={"seed": 1, "population_size": 2}))
    lines: list[str] = []
    opts = SearchOptions(trials=3, runs_dir=str(tmp_path / "runs"), threads=1)
    setup, _ = run_search(space, opts, data=cifar, out=lines.append)
    assert setup.pruner == "none" and any("Optuna cannot prune multi-objective" in line for line in lines)
    study = load(setup.dir, "mo")
    assert len(study.directions) == 2 and all(t.state.name == "COMPLETE" for t in study.get_trials())
    summary = build_search_report(setup.dir)
    assert summary["best"] is None or summary["best"]["params_count"] <= 20000


# --- the space file, without training ----------------------------------------------------------------

def test_space_encoding_and_per_stage(tmp_path):
    assert encode_choice([3, 2, 3]) == "[3, 2, 3]" and encode_choice(0.1) == 0.1
    space = load_space(write_space(tmp_path / "s.yaml", params={
        "model.blocks": {"low": 1, "high": 3, "int": True, "per_stage": True},
        "model.channels": {"choices": [16, 32], "per_stage": True},
        "augment.cutout.size": {"low": 4, "high": 12, "int": True, "step": 4},
    }, stages={"choices": [2, 3]}))
    spec = space.params["model.blocks"]
    assert decode_choice(spec, 2) == 2
    data = config_dict(space, {"model.blocks": [1, 2, 1], "model.channels": [16, 32, 32]}, 3)
    cfg = validate_config(data)
    assert cfg.model.blocks == [1, 2, 1] and cfg.model.channels == [16, 32, 32]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from resnet5m.search.space import suggest

    values, stages = suggest(study.ask(), space)
    assert stages in (2, 3) and len(values["model.blocks"]) == stages and values["augment.cutout.size"] in (4, 8, 12)
    assert set_key({"model": "reddy2024"}, "model.channels", [8])["model"] == {"preset": "reddy2024", "channels": [8]}
    assert set_key({"model": "reddy2024"}, "model", {"blocks": [1]})["model"] == {"blocks": [1]}
    assert set_key({"train": {"epochs": 3}}, "train", {"batch_size": 8})["train"] == {"epochs": 3, "batch_size": 8}


def test_worker_threads_divide_the_cores():
    assert worker_threads(1, cores=16) == 16 and worker_threads(4, cores=16) == 4
    assert worker_threads(3, cores=2) == 1 and worker_threads(2, threads=5, cores=2) == 5


BAD_SPACES = [
    ({"colour": "red"}, "colour: unknown key"),
    ({"params": {"optimizer.lr": {"choices": []}}}, "at least 1 item"),
    ({"params": {"optimizer.lr": {"low": 0.1, "high": 0.1}}}, "low must be below high"),
    ({"params": {"optimizer.lr": {"low": 0, "high": 0.1, "log": True}}}, "log needs low > 0"),
    ({"params": {"optimizer.lrr": {"low": 0.01, "high": 0.1}}}, "optimizer.lrr: unknown key"),
    ({"params": {"model.channels": {"choices": [[8, 16], [8, 16]]}}}, "choices repeat"),
    ({"params": {"model.blocks": {"choices": [[1, 1], [1, 1, 1]]}}}, "model.blocks has choices of [2, 3] stages but "
                                                                     "the base model has 2; to search another stage "
                                                                     "count, give `stages: {choices: [N, ...]}`"),
    ({"set": {}, "base": "fast"}, "val_size 0"),
    ({"base": "no-such-recipe"}, "unknown recipe"),
    ({"params": {"optimizer.lr": {"low": 0.01, "high": 0.1}, "data.val_size": {"choices": [100, 200]}}},
     "data.val_size cannot be searched"),
]


def cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "resnet5m.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_one_line_error(code: int, stderr: str, expected: str) -> None:
    assert code == 2, (code, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet5m: error: ") and "Traceback" not in stderr, stderr
    assert expected in lines[0], lines[0]


def main_in_process(capsys, *args: str) -> tuple[int, str]:
    """``resnet5m ARGS`` in this process: the cases below would spend ~5 s each starting Python."""
    from resnet5m.cli.main import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("change", "expected"), BAD_SPACES, ids=[e for _, e in BAD_SPACES])
def test_bad_space_files_are_one_line_errors(tmp_path, capsys, data_env, change, expected):
    space = write_space(tmp_path / "bad.yaml", **change)
    assert_one_line_error(*main_in_process(capsys, "search", str(space), "--runs-dir", str(tmp_path / "runs")),
                          expected)


def test_bad_space_file_from_the_real_entry_point_is_one_line(tmp_path, data_env):
    r = cli("search", str(write_space(tmp_path / "bad.yaml", colour="red")), "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(r.returncode, r.stderr, "colour: unknown key")


@pytest.mark.parametrize(("url", "expected"), [
    ("not-a-url", "not a database URL"),
    ("nosuchdb://x/y", "cannot open"),
    ("postgresql://nobody@127.0.0.1:1/nodb", "cannot open"),
    ("sqlite:////nonexistent-dir/x/study.db", "cannot open"),
])
def test_bad_storage_urls_are_one_line_errors(tmp_path, capsys, data_env, url, expected):
    space = write_space(tmp_path / "ok.yaml")
    assert_one_line_error(*main_in_process(capsys, "search", str(space), "--storage", url, "--runs-dir",
                                           str(tmp_path / "runs")), expected)


def test_changed_space_or_objectives_refused(tmp_path):
    space = load_space(write_space(tmp_path / "tiny.yaml"))
    opts = SearchOptions(trials=1, runs_dir=str(tmp_path / "runs"))
    from resnet5m.search.runner import setup_study

    setup_study(space, opts, out=lambda line: None)
    with pytest.raises(UserError, match="different objectives"):
        setup_study(space, SearchOptions(trials=1, runs_dir=opts.runs_dir, objectives=["val_acc", "train_s"]))
    wider = load_space(write_space(tmp_path / "tiny.yaml", params={"optimizer.lr": {"low": 0.01, "high": 0.5}}))
    with pytest.raises(UserError, match="different searched keys"):
        setup_study(wider, opts)


def test_pruner_choice(tmp_path):
    from resnet5m.search.runner import make_pruner, setup_study

    space = load_space(write_space(tmp_path / "p.yaml", pruner={"name": "hyperband", "min_resource": 1,
                                                                 "reduction_factor": 2}))
    runs = str(tmp_path / "runs")
    assert isinstance(make_pruner(setup_study(space, SearchOptions(runs_dir=runs))), optuna.pruners.HyperbandPruner)
    none = setup_study(space, SearchOptions(runs_dir=runs, pruner="none"))
    assert isinstance(make_pruner(none), optuna.pruners.NopPruner)
    median = setup_study(space, SearchOptions(runs_dir=runs, pruner="median"))
    assert isinstance(make_pruner(median), optuna.pruners.MedianPruner)


def test_trials_do_not_inherit_the_base_recipes_measurements(tmp_path):
    """`fast` states what was measured for it; a trial, best.yaml and the final retraining are other
    configs, so none of them may carry that block (or its claimed/reported figures)."""
    assert build_config(resolve_recipe("fast")).measured is not None
    space = load_space(write_space(tmp_path / "f.yaml", base="fast",
                                   set={"data.val_size": 500, "data.train_subset": 2000},
                                   params={"optimizer.lr": {"low": 200, "high": 800}}))
    for key in ("measured", "claimed", "reported", "description"):
        assert key not in space.base
    assert space.base_cfg.measured is None and space.base_cfg.claimed == ""
    # best.yaml of a trial whose config.yaml still holds the base's block (a study made before the fix)
    from resnet5m.reporting.search_report import best_recipe

    trial = tmp_path / "study" / "trials" / "trial-0"
    trial.mkdir(parents=True)
    (trial / "config.yaml").write_text(yaml.safe_dump(build_config(resolve_recipe("fast")).model_dump(mode="json")))
    text = best_recipe(tmp_path / "study", {"run_dir": "trials/trial-0", "number": 0, "val_acc": 0.5,
                                            "params_count": 1}, {"name": "f"})
    (tmp_path / "best.yaml").write_text(text)
    best = build_config(str(tmp_path / "best.yaml"))
    assert best.measured is None and best.reported is None and best.claimed == ""
