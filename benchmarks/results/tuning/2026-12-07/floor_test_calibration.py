"""Calibrate a shorter floor test for the fast recipe: each (setting, variant, seed) appended to calib.jsonl."""
import json, pathlib, platform, shutil, subprocess, sys, time
from resnet5m.data import load_cifar10
from resnet5m.training import Trainer, build_config
from resnet5m.training.recipes import resolve_recipe
from resnet5m.runtime import tune_glibc_malloc
tune_glibc_malloc()
cifar = load_cifar10("/work/shared/data/cifar10.npz")
SETTINGS = {
    "now": ["data.train_subset=10000", "data.val_size=5000", "train.epochs=2", "model.whiten_bias_epochs=1",
            "train.resolution_schedule=[{until_epoch: 1, size: 24}]"],
    "v1": ["data.train_subset=10000", "data.val_size=5000", "train.epochs=2", "model.whiten_bias_epochs=1",
           "train.resolution_schedule=[{until_epoch: 1, size: 16}]"],
    "v2": ["data.train_subset=5000", "data.val_size=5000", "train.epochs=3", "train.batch_size=500",
           "model.whiten_bias_epochs=1", "train.resolution_schedule=[{until_epoch: 1, size: 16}, {until_epoch: 2, size: 24}]"],
}
VARIANTS = {"recipe": [], "no_whiten": ["model.whiten=false"], "sgd": ["optimizer.name=sgd"]}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
commit = subprocess.run(["git", "-C", "/work/main", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = pathlib.Path("/work/tmp/calib.jsonl")
for item in sys.argv[1:]:
    setting, variant, seed = item.split(":")
    cfg = build_config(resolve_recipe("fast"), SETTINGS[setting] + VARIANTS[variant] + [f"seed={seed}"])
    d = pathlib.Path("/work/tmp/calibrun"); shutil.rmtree(d, ignore_errors=True); d.mkdir(parents=True)
    t0 = time.perf_counter()
    t = Trainer(cfg, cifar, d, out=lambda s: None, progress=False)
    t.fit()
    wall = time.perf_counter() - t0
    val = t.validate()[1]
    row = dict(setting=setting, variant=variant, seed=int(seed), val_acc=val, train_s=t.state.train_time_s, wall_s=wall,
               cpu=cpu, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit)
    print(json.dumps(row), flush=True)
    with out.open("a") as f: f.write(json.dumps(row) + "\n")
