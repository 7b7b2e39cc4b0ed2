"""The benchmark scripts' logic, end to end, in tiny settings (the real runs take hours on this CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=BENCH)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _two_results(tmp_path: Path) -> list[str]:
    for name, lr in (("a", 0.1), ("b", 0.2)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"config": {"lr": lr}, "results": [{"seed": 0}]}))
    return [str(tmp_path / "a.json"), str(tmp_path / "b.json")]


@pytest.mark.parametrize("script, args, message", [
    ("time_to_accuracy.py", ["--set", "optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0"),
    ("race.py", ["--set", "optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0"),
    ("race.py", ["--probe-size", "0"], "--probe-size 0: must be at least 1"),
    ("time_to_accuracy.py", ["--merge", "{tmp}/none.json", "--out", "{tmp}/m.json"], "none.json: No such file"),
    ("time_to_accuracy.py", ["--merge", "A", "B", "--out", "{tmp}/m.json"], "different configs; not merging"),
    # valid JSON of another shape, and settings checked before --out is made (2026-12-08)
    ("time_to_accuracy.py", ["--merge", "A", "LIST", "--out", "{tmp}/m.json"], "list.json: not a results file"),
    ("time_to_accuracy.py", ["--merge", "A", "A", "--out", "{tmp}/m.json"], "a.json: not a results file"),
    ("time_to_accuracy.py", ["--out", "LIST", "--set", "train.epochs=0.01"], "list.json: not a results file"),
    ("race.py", ["--table-only", "--out", "LIST"], "list.json: not a results file of this script"),
    ("step_losses.py", ["--compare", "LIST", "A"], "not a results file of this script"),
    ("ablations.py", ["--table-only", "--dir", "{tmp}"], "no variant results in it"),
    ("gpu_suite.py", ["table", "--out", "{tmp}/m.json"], "no such folder"),
    ("gpu_suite.py", ["run", "--tiny", "--set", "optimizer.lr=-1", "--out", "{tmp}/m.json"], "optimizer.lr"),
    ("profile_step.py", ["--images", "0", "--out", "{tmp}/m.json"], "--images 0: must be 1..1,000,000"),
    ("race.py", ["--table-only", "--out", "DEEP"], "deep.json: not a results file of this script (RecursionError"),
    ("step_losses.py", ["--compare", "FIFO", "A"], "fifo: not a regular file"),
])
def test_benchmark_errors_are_one_line(tmp_path, script, args, message):
    a, b = _two_results(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(tmp_path / "fifo")  # would block a plain read forever
    named = {"A": a, "B": b, "LIST": tmp_path / "list.json", "DEEP": tmp_path / "deep.json", "FIFO": tmp_path / "fifo"}
    args = [str(named.get(x, x.format(tmp=tmp_path))) for x in args]
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=300, cwd=BENCH)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith(f"{script}: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr and not (tmp_path / "m.json").exists()


def test_gpu_suite_removes_data_that_fails_its_checksum(tmp_path):
    sys.path.insert(0, str(BENCH))
    from gpu_suite import assemble_data
    from resnet5m.errors import UserError

    for i in range(3):
        (tmp_path / f"p{i + 1}").mkdir()
        (tmp_path / f"p{i + 1}" / f"chunk.{i}").write_bytes(bytes([i]) * 10)
    (tmp_path / "p3" / "cifar10.npz.sha256").write_text("0" * 64 + "  cifar10.npz\n")
    with pytest.raises(UserError, match="does not match"):
        assemble_data(tmp_path)
    assert not (tmp_path / "cifar10.npz").exists()  # a bad copy is never used
    whole = b"\0" * 10 + b"\1" * 10 + b"\2" * 10
    (tmp_path / "p3" / "cifar10.npz.sha256").write_text(hashlib.sha256(whole).hexdigest())
    assert assemble_data(tmp_path).read_bytes() == whole  # a good copy is assembled and kept


def test_gpu_suite_runs_end_to_end_with_a_tiny_setting(tmp_path, data_env):
    common = ["--tiny", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--data", str(data_env)]
    first = bench("gpu_suite.py", "run", "--budget-s", "6", *common)  # stops at its budget; the next call resumes
    assert "budget spent" in first.stdout and "all steps done" not in first.stdout, first.stdout
    for _ in range(20):
        out = bench("gpu_suite.py", "run", "--budget-s", "300", *common).stdout
        if "all steps done" in out:
            break
    plan = bench("gpu_suite.py", "plan", *common).stdout
    assert plan.count("done") == 6 and "to do" not in plan  # 2 fast seeds, strong, max, 2 references
    table = bench("gpu_suite.py", "table", *common).stdout
    assert "| fast |" in table and "| sgd-lr0.005 | 90.25 / 91.76 / 90.92 |" in table
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert rows["fast"]["n"] == 2 and rows["adam-lr0.005"]["reported_test_acc"]["test_acc"] == [0.91602]
    step = json.loads((tmp_path / "out" / "fast-100.json").read_text())
    assert step["tiny"] and 0 < step["results"]["test_acc"] <= 1 and step["seed"] == 100


def test_race_pairs_seeds_and_appends(tmp_path, data_env):
    tiny = ["--set", "data.train_subset=300", "--set", "train.epochs=0.2", "--set", "train.batch_size=100",
            "--set", "train.eval_batch_size=500", "--set", "eval.tta=flip", "--test-slice", "500",
            "--probe-size", "256"]
    out = tmp_path / "race.json"
    bench("race.py", "--seeds", "100", "--out", str(out), *tiny)
    bench("race.py", "--seeds", "100,101", "--out", str(out), *tiny)  # continues: only seed 101 is new
    doc = json.loads(out.read_text())
    assert [p["seed"] for p in doc["pairs"]] == [100, 101]
    s = doc["summary"]
    assert s["n_pairs"] == 2 and s["a"]["recipe"] == "fast" and s["b"]["recipe"] == "airbench94-equivalent"
    ratios = [p["a"]["train_s"] / p["b"]["train_s"] for p in doc["pairs"]]
    assert abs(s["ratio_train"]["mean"] - sum(ratios) / 2) < 1e-12
    assert all(p["a"]["scored_on"] == "test" and "cpu" in p["machine"] for p in doc["pairs"])


def test_gpu_suite_max_length_plan_scores_tuning_runs_on_validation_only(tmp_path, data_env):
    common = ["--tiny", "--plan", "max-length", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
              "--data", str(data_env)]
    assert "all steps done" in bench("gpu_suite.py", "run", *common).stdout
    val = json.loads((tmp_path / "out" / "max40-val-0.json").read_text())
    assert val["validation"] and val["results"]["test_acc"] is None and 0 < val["results"]["last_val_acc"] <= 1
    assert "train.epochs=40" not in val["overrides"] and "data.val_size=100" in val["overrides"]  # tiny length kept
    test = json.loads((tmp_path / "out" / "max-103.json").read_text())
    assert not test["validation"] and 0 < test["results"]["test_acc"] <= 1 and test["results"]["val_images"] == 0
    assert "max40-val (validation accuracy, not test)" in bench("gpu_suite.py", "table", *common).stdout
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert rows["max40-val"]["validation"] and not rows["max"]["validation"]
    assert rows["max40-val"]["scored_on"] == "validation" and rows["max"]["scored_on"] == "test"
    assert rows["max40-val"]["acc_mean"] == pytest.approx(val["results"]["last_val_acc"])  # n = 1: its own score


def test_near_duplicates_finds_an_exact_copy_and_ignores_the_rest():
    sys.path.insert(0, str(BENCH))
    from near_duplicates import features, nearest, shares

    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    queries = torch.cat([ref[7:8], torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)])
    sim = nearest(features(queries), features(ref), chunk=16)  # chunked: the copy sits in the first chunk
    assert sim[0] > 0.9999 and (sim[1:] < 0.5).all()  # random images are far from each other
    assert shares(sim)["share_ge_0.99"] == 0.25 and shares(sim)["n"] == 4


def test_profile_step_writes_device_and_host_tables(tmp_path):
    bench("profile_step.py", "--recipe", "fast", "--images", "200", "--epochs", "0.5", "--rows", "5",
          "--set", "train.batch_size=100", "--set", "channels_last=false", "--out", str(tmp_path))
    text = (tmp_path / "profile_fast.txt").read_text()
    assert "200 synthetic images x 0.5 epochs" in text and "run without profiler" in text
    host = text.split("top by self host time:")[1]
    assert "aten::" in host and "Self CPU time total" in host  # a real profiler table, not an empty one


def test_gpu_suite_ladder_2_interleaves_the_muon_ab_and_uses_fresh_seeds():
    sys.path.insert(0, str(BENCH))
    from gpu_suite import steps

    plan = steps(tiny=False, plan="ladder-2")
    names = [s.name for s in plan]
    assert names[:4] == ["fast-120", "fast-unbatched-120", "fast-121", "fast-unbatched-121"]
    assert all(s.overrides == ("optimizer.muon_batched=false",) for s in plan if "unbatched" in s.name)
    assert sum(s.group == "fast-batched-muon" for s in plan) == 10
    assert [s.seed for s in plan if s.recipe in ("strong", "max")] == [120, 121, 122] * 2
    assert min(s.seed for s in plan) >= 120 and not any(s.val for s in plan)  # fresh seeds, final runs only
    g = [s for s in plan if s.group == "fast-32px-G"]  # rung 1's GPU form, right after the A/B
    assert names[4:14] == [s.name for s in g] and [s.seed for s in g] == list(range(130, 140))
    assert all(s.recipe == "fast" and s.overrides == ("train.resolution_schedule=[]",) for s in g)
    seeds = [(s.recipe, s.seed) for s in plan if "unbatched" not in s.name]
    assert len(seeds) == len(set(seeds))  # fast and G never share a seed; only the A/B repeats one, by design


def test_gpu_suite_compiles_muon_only_where_a_step_asks():
    sys.path.insert(0, str(BENCH))
    from gpu_suite import config_of, steps

    plan = steps(tiny=False, plan="ladder-3")
    cfgs = {s.name: config_of(s, False, "cpu", s.compile, s.overrides) for s in plan}
    for name in ("g-compiled-143", "g2k-compiled-144", "strong-compiled-145", "strong-compiled-146"):
        assert cfgs[name].optimizer.muon_compile and cfgs[name].compile
    assert not any(c.optimizer.muon_compile or c.compile for n, c in cfgs.items() if "compiled" not in n)
    assert cfgs["g2k-compiled-144"].train.batch_size == cfgs["g2k-150"].train.batch_size == 2000


def test_gpu_suite_warms_up_a_compiled_step_as_it_will_run(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    import argparse

    import resnet5m.training.run as run_module
    from gpu_suite import steps, warm_up, warm_up_key

    seen = []
    monkeypatch.setattr(run_module, "train_run", lambda cfg, *a, **k: seen.append(cfg))
    plan = {s.name: s for s in steps(tiny=False, plan="ladder-3")}
    args = argparse.Namespace(work=tmp_path, device="cpu")
    assert warm_up(args, None, *warm_up_key(plan["g2k-compiled-143"], False), budget_s=1)
    assert warm_up(args, None, *warm_up_key(plan["fast32-130"], False), budget_s=1)
    compiled, eager = seen
    assert compiled.compile and compiled.optimizer.muon_compile and compiled.train.resolution_schedule == []
    assert compiled.train.batch_size == 2000 and compiled.data.train_subset == 3000  # G2k's shapes, few images
    assert not eager.compile and not eager.optimizer.muon_compile and eager.train.resolution_schedule  # fast's
    assert warm_up_key(plan["fast32-130"], False) == warm_up_key(plan["fast-120"], False)  # one eager warm-up


def test_gpu_suite_ladder_3_plan_validates_before_it_adopts(tmp_path):
    sys.path.insert(0, str(BENCH))
    from gpu_suite import steps

    plan = steps(tiny=False, plan="ladder-3")
    names = [s.name for s in plan]
    assert names[:4] == ["fast-120", "fast-unbatched-120", "fast-121", "fast-unbatched-121"]
    assert [s.seed for s in plan if s.group == "fast-32px-G"] == list(range(130, 140))
    val = [s for s in plan if s.val]  # interleaved pairs G, G2k on split k with tuning seed k; test set unused
    assert [(s.name, s.seed) for s in val] == [(f"{f}-val-{k}", k) for k in range(6) for f in ("g", "g2k")]
    assert all(f"data.split_seed={s.seed}" in s.overrides and "data.val_size=5000" in s.overrides for s in val)
    conditional = [s for s in plan if s.only_if]
    assert all(names.index(s.name) > names.index("g2k-val-5") for s in conditional)  # decided before they run
    assert {s.only_if for s in conditional} == {"G", "G2k"} and [s.seed for s in plan if s.group ==
                                                               "fast-32px-b2000-G2k"] == list(range(150, 160))
    assert all(s.compile and s.compile_optimizer for s in conditional if "compiled" in s.name)
    assert names[-3:] == ["max-120", "max-121", "max-122"]  # last: the longest runs, the least needed
    assert names[-5:-3] == ["strong-compiled-145", "strong-compiled-146"]  # strong's lever for 8 s, before max
    final = [(s.recipe, s.seed) for s in plan if not s.val and "unbatched" not in s.name and s.only_if != "G2k"]
    assert len(final) == len(set(final)) and min(seed for _, seed in final) >= 120  # fresh, never repeated


def _val_result(out, name, acc):
    (out / f"{name}.json").write_text(json.dumps({"results": {"last_val_acc": acc}}))


@pytest.mark.parametrize("g2k_minus_g,adopted", [(-0.0009, "G2k"), (-0.0011, "G"), (0.002, "G2k")])
def test_gpu_suite_rung1_rule(tmp_path, g2k_minus_g, adopted):
    sys.path.insert(0, str(BENCH))
    from gpu_suite import decide_rung1

    for k in range(6):
        _val_result(tmp_path, f"g-val-{k}", 0.93 + k / 1000)
        if k < 5:
            _val_result(tmp_path, f"g2k-val-{k}", 0.93 + k / 1000 + g2k_minus_g)
    assert decide_rung1(tmp_path, tiny=False) is None  # a pair is missing: no decision yet
    _val_result(tmp_path, "g2k-val-5", 0.935 + g2k_minus_g)
    d = decide_rung1(tmp_path, tiny=False)
    assert d["adopted"] == adopted and d["n"] == 6 and d["diff_points_mean"] == pytest.approx(g2k_minus_g * 100)
    assert json.loads((tmp_path / "rung1-decision.json").read_text())["adopted"] == adopted


def test_gpu_suite_ladder_3_runs_tiny_and_runs_only_the_adopted_form(tmp_path, data_env):
    common = ["--tiny", "--plan", "ladder-3", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
              "--data", str(data_env)]
    log = bench("gpu_suite.py", "run", *common).stdout
    assert "all steps done" in log, log
    out = tmp_path / "out"
    decision = json.loads((out / "rung1-decision.json").read_text())
    adopted, other = decision["adopted"], {"G": "G2k", "G2k": "G"}[decision["adopted"]]
    assert decision["n"] == 2 and "rung1-decision" in (out / "steps.jsonl").read_text()
    ran = json.loads((out / f"{adopted.lower()}-compiled-143.json").read_text())
    assert ran["results"]["test_acc"] > 0 and not ran["validation"]
    assert json.loads((out / f"{other.lower()}-compiled-143.json").read_text())["skipped"]
    strong = json.loads((out / "strong-compiled-145.json").read_text())  # tiny: not compiled (inductor on a CPU)
    assert strong["results"]["test_acc"] > 0 and strong["group"] == "strong-compiled-step" and not strong["compile"]
    assert (adopted == "G2k") == ("skipped" not in json.loads((out / "g2k-150.json").read_text()))
    val = json.loads((out / "g2k-val-1.json").read_text())
    assert val["validation"] and val["results"]["test_acc"] is None and "train.batch_size=200" in val["overrides"]
    plan = bench("gpu_suite.py", "plan", *common).stdout
    assert "to do" not in plan and plan.count("skipped (form not adopted)") == 1 + (adopted == "G")
    bench("gpu_suite.py", "table", *common)
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert f"fast-32px-{other}-compiled-step" not in rows and rows[f"fast-32px-{adopted}-compiled-step"]["n"] == 1
    assert rows["G2k-val"]["scored_on"] == "validation" and rows["G2k-val"]["n"] == 2
