"""End-to-end training on small slices of the real CIFAR-10: learning, resume, signals, NaN, honesty."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from resnet5m.cli.main import main
from resnet5m.data.cifar10 import Cifar10
from resnet5m.errors import UserError
from resnet5m.io.rundir import read_metrics
from resnet5m.models.registry import build_model, parse_model_config
from resnet5m.training import NonFiniteLoss, Trainer, build_config, train_run

TINY = {
    "model": {"blocks": [1, 1], "channels": [16, 32]},
    "data": {"val_size": 500, "train_subset": 2000},
    "train": {"epochs": 3, "batch_size": 100, "eval_batch_size": 2000},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "augment": {"crop": {"padding": 4}, "flip": {}},
}
CURVE_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


def write_cfg(path: Path, data: dict, **updates) -> Path:
    cfg = json.loads(json.dumps(data))
    for dotted, value in updates.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, env_extra=None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "resnet5m.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def curve(run: Path) -> list[tuple]:
    return [tuple(round(r[k], 6) if isinstance(r[k], float) else r[k] for k in CURVE_KEYS) for r in read_metrics(run)]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_short_real_run_learns_and_writes_everything(cifar, tmp_path, capsys):
    cfg = build_config(str(write_cfg(tmp_path / "c.yaml", TINY, model__channels=[32, 64],
                                     train__epochs=2)))
    run = tmp_path / "run"
    run.mkdir()
    r = train_run(cfg, cifar, run, progress=False)
    assert r["test_acc"] > 0.30, r  # chance is 0.10
    assert r["params"] == sum(p.numel() for p in __import__("resnet5m").models.build_model(cfg.model).parameters())
    for f in ("config.yaml", "metrics.csv", "metrics.jsonl", "best.safetensors", "last.safetensors",
              "resume.pt", "results.json"):
        assert (run / f).is_file(), f
    rows = read_metrics(run)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["images_per_s"] > 0 and 0 <= row["data_share"] <= 1 for row in rows)
    assert r["selected_epoch"] == max(rows, key=lambda x: x["val_acc"])["epoch"]
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,lr,train_loss,train_acc,val_loss,val_acc,time_s,images_per_s,data_share"
    out = capsys.readouterr().out
    assert "test accuracy:" in out and f"parameters: {r['params']:,}" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["channels"] == [32, 64] and saved["optimizer"]["lr"] == 0.05


def test_test_set_is_not_used_for_selection(cifar, tmp_path):
    """Poison the test labels: everything up to the final evaluation must be identical."""
    cfg = build_config(str(write_cfg(tmp_path / "c.yaml", TINY, train__epochs=3)))
    g = torch.Generator().manual_seed(0)
    poisoned = Cifar10(cifar.train_images, cifar.train_labels, cifar.test_images,
                       torch.randint(0, 10, (len(cifar.test_labels),), generator=g), "poisoned")
    runs = []
    for name, data in (("clean", cifar), ("poisoned", poisoned)):
        run = tmp_path / name
        run.mkdir()
        runs.append((run, train_run(cfg, data, run, progress=False)))
    (a, ra), (b, rb) = runs
    assert curve(a) == curve(b)
    assert ra["selected_epoch"] == rb["selected_epoch"] and ra["best_val_acc"] == rb["best_val_acc"]
    assert same_weights(a / "best.safetensors", b / "best.safetensors")
    assert ra["test_acc"] > 0.25 and rb["test_acc"] < 0.15  # the poison shows only at the very end


def test_val_size_zero_selects_last_epoch(cifar, tmp_path):
    cfg = build_config(str(write_cfg(tmp_path / "c.yaml", TINY, data__val_size=0, train__epochs=2)))
    run = tmp_path / "run"
    run.mkdir()
    r = train_run(cfg, cifar, run, progress=False)
    assert r["best_val_acc"] is None and r["selected_epoch"] == 2 and "last epoch" in r["selection"]
    assert same_weights(run / "best.safetensors", run / "last.safetensors")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, data_env):
    cfg = write_cfg(tmp_path / "c.yaml", TINY, train__epochs=4, model__dropout=0.1,
                    train__ema={"decay": 0.9}, augment__color_jitter={"brightness": 0.2})
    common = ["train", "--config", str(cfg), "--deterministic", "--runs-dir", str(tmp_path), "--no-progress",
              "--threads", "2"]
    ref = cli(*common, "--name", "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    victim = cli(*common, "--name", "killed")
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside the next epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert not (tmp_path / "killed" / "results.json").exists(), "the run finished before it could be killed"
    resumed = cli("train", "--resume", str(tmp_path / "killed"), "--no-progress", "--threads", "2")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    assert curve(tmp_path / "ref") == curve(tmp_path / "killed")
    for f in ("best.safetensors", "last.safetensors"):
        assert same_weights(tmp_path / "ref" / f, tmp_path / "killed" / f), f
    ra = json.loads((tmp_path / "ref" / "results.json").read_text())
    rb = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert ra["test_acc"] == rb["test_acc"] and ra["test_loss"] == rb["test_loss"]


# five short epochs: the signal is sent once epoch 1 is logged, so a slow or busy host still has four epochs
# (~9 s) to deliver it before the run would end on its own (two epochs once lost that race in CI)
SIGNAL_RUN = {"train__epochs": 5, "data__train_subset": 3000, "train__batch_size": 50}
SIGNAL_ARGS = ("--deterministic", "--no-progress", "--threads", "2")


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, cifar_path) -> Path:
    """The run both signal tests must reproduce: the same config, trained once without interruption."""
    root = tmp_path_factory.mktemp("signal-ref")
    cfg = write_cfg(root / "c.yaml", TINY, **SIGNAL_RUN)
    ref = cli("train", "--config", str(cfg), *SIGNAL_ARGS, "--runs-dir", str(root), "--name", "ref",
              env_extra={"RESNET5M_DATA": str(cifar_path)})
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    return root / "ref"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_checkpoints_mid_epoch_and_resume_is_exact(tmp_path, data_env, uninterrupted_run, sig):
    cfg = write_cfg(tmp_path / "c.yaml", TINY, **SIGNAL_RUN)
    victim = cli("train", "--config", str(cfg), *SIGNAL_ARGS, "--runs-dir", str(tmp_path), "--name", "int")
    metrics = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not metrics.exists():  # epoch 1 is done: the signal falls inside a later epoch
        time.sleep(0.05)
    time.sleep(0.4)
    victim.send_signal(sig)
    out, err = victim.communicate(timeout=120)
    assert victim.returncode == 130, (out, err)
    assert "checkpoint saved" in out and "--resume" in out and "Traceback" not in err
    assert (tmp_path / "int" / "resume.pt").exists()
    assert not (tmp_path / "int" / "results.json").exists()
    resumed = cli("train", "--resume", str(tmp_path / "int"), "--no-progress", "--threads", "2")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert len(curve(tmp_path / "int")) == 5 and curve(uninterrupted_run) == curve(tmp_path / "int")
    assert same_weights(uninterrupted_run / "last.safetensors", tmp_path / "int" / "last.safetensors")


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(cifar, tmp_path):
    cfg = build_config(str(write_cfg(tmp_path / "c.yaml", TINY, train__epochs=3)))
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(cfg, cifar, run, out=lambda s: None, progress=False)
    calls = {"n": 0}
    forward = trainer.model.forward

    def poisoned_forward(x):
        if trainer.model.training:  # count training steps only, not validation passes
            calls["n"] += 1
        out = forward(x)
        return out * float("nan") if calls["n"] == trainer.steps_per_epoch + 3 and trainer.model.training else out

    trainer.model.forward = poisoned_forward
    with pytest.raises(NonFiniteLoss, match=r"loss became NaN at epoch 2, step 3 of the epoch.*intact"):
        trainer.fit()
    assert read_metrics(run)[-1]["epoch"] == 1
    from resnet5m.models.weights import load_trained_model

    model, info = load_trained_model(run / "last.safetensors")  # refuses non-finite weights
    assert info["epoch"] == 1 and all(torch.isfinite(v).all() for v in model.state_dict().values()
                                      if v.is_floating_point())


def test_every_augmentation_and_trick_runs_in_training(cifar, tmp_path, monkeypatch):
    from resnet5m.data import augment
    from resnet5m.training import trainer as trainer_mod

    calls: dict[str, int] = {}

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)
        return wrapper

    for name, fn in list(augment._STEPS.items()):
        monkeypatch.setitem(augment._STEPS, name, counted(name, fn))
    monkeypatch.setattr(trainer_mod, "mix_batch", counted("mix", trainer_mod.mix_batch))
    cfg = build_config(str(write_cfg(
        tmp_path / "c.yaml", TINY, train__epochs=1, data__train_subset=500, data__val_size=100,
        augment={"resized_crop": {}, "crop": {"padding": 2, "mode": "zero"}, "rotation": {"degrees": 10},
                 "translate": {"fraction": 0.1}, "flip": {"mode": "alternating"}, "vflip": {"p": 0.1},
                 "color_jitter": {"hue": 0.05}, "blur": {}, "cutout": {"size": 8}},
        train__mixup={"alpha": 0.2, "p": 0.5}, train__cutmix={"alpha": 1.0}, train__label_smoothing=0.1,
        train__grad_clip=2.0, train__ema={"decay": 0.99}, optimizer__no_decay_bn_bias=True,
        schedule={"name": "onecycle"}, eval={"tta": "flip_translate"})))
    run = tmp_path / "run"
    run.mkdir()
    r = train_run(cfg, cifar, run, progress=False)
    batches = 500 // 100
    assert calls == {**{name: batches for name in augment._STEPS}, "mix": batches}, calls  # each ran on every batch
    assert r["tta"] == "flip_translate" and r["tta_time_s"] > 0 and r["test_acc"] != r["test_acc_no_tta"]
    assert all(math.isfinite(r[k]) for k in ("train_loss", "test_loss", "test_loss_no_tta"))


def test_distillation_learns_from_the_teacher_not_the_labels(cifar, tmp_path):
    """The student sees only shuffled (meaningless) training labels; with alpha=1 everything it learns
    comes from the teacher. If the teacher were ignored, it would stay at chance."""
    teacher_cfg = build_config(str(write_cfg(tmp_path / "t.yaml", TINY, train__epochs=2)))
    (tmp_path / "teacher").mkdir()
    teacher = train_run(teacher_cfg, cifar, tmp_path / "teacher", progress=False)
    g = torch.Generator().manual_seed(0)
    shuffled = Cifar10(cifar.train_images, cifar.train_labels[torch.randperm(len(cifar.train_labels), generator=g)],
                       cifar.test_images, cifar.test_labels, "shuffled train labels")
    student = build_config(str(write_cfg(tmp_path / "s.yaml", TINY, train__epochs=3, model__channels=[8, 16],
                                         train__distill={"teacher": str(tmp_path / "teacher"), "alpha": 1.0})))
    (tmp_path / "student").mkdir()
    r = train_run(student, shuffled, tmp_path / "student", progress=False)
    # measured 2026-11-25: 0.183 from the teacher; 0.115 with alpha=0 (the labels only), i.e. a teacher ignored
    assert teacher["test_acc"] > 0.22 and r["test_acc"] > 0.15, (teacher["test_acc"], r["test_acc"])


def test_seeds_report_mean_and_std(tmp_path, capsys, data_env):
    cfg = write_cfg(tmp_path / "c.yaml", TINY, train__epochs=1, data__train_subset=1000)
    assert main(["train", "--config", str(cfg), "--seeds", "0,1", "--name", "multi", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["seeds"] == [0, 1]
    vals = summary["test_acc"]["values"]
    assert summary["test_acc"]["mean"] == pytest.approx(sum(vals) / 2)
    assert summary["test_acc"]["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    assert vals[0] != vals[1]  # different seeds really differ
    assert "over 2 seeds" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--set", "optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0"),
    (["--set", "optimizer.bogus=1"], "optimizer.bogus: unknown key"),
    (["--set", "train.epochs=abc"], "train.epochs: Input should be a valid number"),
    (["--set", "augment.cutout.size=99"], "augment.cutout.size: Input should be less than or equal to 32"),
    (["--set", "schedule.name=sometimes"], "schedule.name: Input should be"),
    (["--model", "resnet18"], "11,173,962 trainable parameters, over the budget of 5,000,000"),
    (["--config", "nope"], "unknown recipe 'nope'"),
    (["--set", "noequals"], "expected KEY=VALUE"),
    (["--config", "reddy2024", "--val-size", "0"], "plateau steps on the validation metric; it needs data.val_size"),
])
def test_config_errors_are_caught_before_any_work(tmp_path, capsys, args, message, data_env):
    """In process (one Python start-up per case would cost ~5 s each); the next test runs the real entry point."""
    try:
        code = main(["train", "--runs-dir", str(tmp_path), *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # no run directory was created


def test_config_error_from_the_real_entry_point_is_one_line(tmp_path, data_env):
    p = cli("train", "--runs-dir", str(tmp_path), "--set", "optimizer.lr=-1")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, (out, err)
    assert err.startswith("resnet5m: error: ") and "optimizer.lr: Input should be greater than 0" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_run_rejected_by_the_data_leaves_no_directory(tmp_path, capsys, data_env):
    args = ["train", "--config", str(write_cfg(tmp_path / "c.yaml", TINY, data__train_subset=100,
                                               train__batch_size=512)),
            "--name", "big-batch", "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    assert main(args) == 2
    assert "batch_size 512 exceeds the 100 training images" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "big-batch").exists()  # the same --name can be used again


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(cifar, tmp_path, capsys, data_env):
    from resnet5m.training.config import config_to_yaml

    cfg = build_config(str(write_cfg(tmp_path / "c.yaml", TINY, train__epochs=1)))
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(cfg))  # what a run killed during set-up leaves behind
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "no checkpoint yet" in capsys.readouterr().out
    assert (run / "results.json").exists() and len(read_metrics(run)) == 1


def test_stop_handler_is_installed_and_restored():
    from resnet5m.training.checkpoint import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    with stop.installed():
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested  # the handler ran instead of terminating the process
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_wall_time_is_carried_across_a_resume(cifar, tmp_path):
    cfg = build_config(str(write_cfg(tmp_path / "c.yaml", TINY, train__epochs=1)))
    first = Trainer(cfg, cifar, tmp_path, out=lambda s: None, progress=False)
    first.state.wall_time_s = 1000.0  # as if earlier processes had run for 1000 s
    first.save_checkpoint()
    second = Trainer(cfg, cifar, tmp_path, out=lambda s: None, progress=False)
    second.load_checkpoint()
    assert second.state.wall_time_s >= 1000.0
    assert second.wall_time() >= second.state.wall_time_s


def test_init_from_starts_a_new_run_from_saved_weights(cifar, tmp_path, capsys, data_env):
    """--init-from: the new run starts from the weights (fine-tuning, or training on with a new schedule),
    with a fresh optimizer and step count; its resume needs only its own checkpoint."""
    import shutil

    from resnet5m.io.rundir import write_config
    from resnet5m.models.weights import load_weights_into
    from resnet5m.training.config import config_to_yaml

    first = build_config(str(write_cfg(tmp_path / "a.yaml", TINY, train__epochs=1, data__train_subset=1000)))
    (tmp_path / "a").mkdir()
    before = train_run(first, cifar, tmp_path / "a", progress=False)
    new = build_config(str(write_cfg(tmp_path / "b.yaml", TINY, train__epochs=1, data__train_subset=1000,
                                     optimizer__lr=1e-9, train__init_from=str(tmp_path / "a"))))
    (tmp_path / "b").mkdir()
    after = train_run(new, cifar, tmp_path / "b", progress=False)
    saved, trained = (load_file(str(tmp_path / r / f))
                      for r, f in (("a", "best.safetensors"), ("b", "last.safetensors")))
    convs = [k for k, v in saved.items() if v.ndim == 4]
    assert convs and all(torch.allclose(saved[k], trained[k], atol=1e-6) for k in convs)  # lr ~0: it started there
    assert abs(after["test_acc"] - before["test_acc"]) < 0.02
    assert read_metrics(tmp_path / "b")[0]["epoch"] == 1  # a new run: its own epochs and schedule
    other = TINY["model"] | {"channels": [8, 32]}
    with pytest.raises(UserError, match=r"its model is not this run's \(first difference: "):
        load_weights_into(build_model(parse_model_config(other)), tmp_path / "a")
    code = main(["train", "--config", str(tmp_path / "b.yaml"), "--init-from", str(tmp_path / "none"),
                 "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "none: no such run directory or weights file" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    longer = new.model_copy(update={"train": new.train.model_copy(update={"epochs": 2})})
    (tmp_path / "c").mkdir()
    write_config(tmp_path / "c", config_to_yaml(longer))
    t = Trainer(longer, cifar, tmp_path / "c", out=lambda s: None, progress=False)
    t.epochs = 1  # stopped after epoch 1, as a kill right after its checkpoint would
    t.fit()
    shutil.rmtree(tmp_path / "a")  # the starting weights are gone: the resume does not need them
    assert main(["train", "--resume", str(tmp_path / "c"), "--no-progress"]) == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "c")] == [1, 2]


def test_a_stopped_multi_seed_run_names_the_whole_run(monkeypatch, tmp_path):
    """Ctrl-C in seed 1 of `--seeds 0,1,2`: the hint resumes the whole run (every seed and the summary), not
    seed 1's folder alone."""
    from resnet5m.training import run as run_mod
    from resnet5m.training.checkpoint import TrainingInterrupted

    def fake_run(cfg, data, seed_dir, **kw):
        if cfg.seed == 1:
            raise TrainingInterrupted(seed_dir, 2, 5)
        return {}

    monkeypatch.setattr(run_mod, "train_run", fake_run)
    (tmp_path / "ms").mkdir()
    with pytest.raises(TrainingInterrupted) as stop:
        run_mod.train_seeds(build_config(None, ["data.train_subset=100"]), None, tmp_path / "ms", [0, 1, 2],
                            out=lambda s: None, progress=False)
    assert str(stop.value) == ("seed 1 interrupted at epoch 3, batch 5; checkpoint saved. Continue with: "
                               f"resnet5m train --resume {tmp_path / 'ms'}")
