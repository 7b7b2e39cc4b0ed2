"""Hostile and broken inputs: every one is a one-line error (exit 2), with bounded time and memory,
nothing half-written, nothing outside the folders asked for; one run directory has one writer.

Each test here reproduces a case found by a hostile-user review (issue #13); the fuzz test feeds
hundreds of randomly corrupted files to the commands (tests/fuzz_worker.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from resnet5m.cli.main import main
from resnet5m.models import build_model, parse_model_config
from resnet5m.models.weights import save_weights

TINY_MODEL = {"family": "resnet", "blocks": [1], "channels": [8]}


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("resnet5m: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def limited(args: list[str], gib: int = 2, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess under an address-space limit, so a memory bomb cannot take the machine down."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))
    return subprocess.run([sys.executable, "-m", "resnet5m.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, **kw)


@pytest.fixture
def weights(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model(parse_model_config(TINY_MODEL))
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"epoch": 1, "budget": 5_000_000, "allow_over_budget": False})
    return path


@pytest.fixture
def inputs(tmp_path) -> Path:
    path = tmp_path / "inputs.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    return path


def resave(src: Path, dst: Path, *, tensors=None, **meta_changes) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    meta.update(meta_changes)
    dst.write_bytes(save(tensors(state) if tensors else state, metadata=meta))
    return dst


# --- 1. weights that describe a huge model ---------------------------------------------------------

def test_weights_describing_a_huge_model_are_refused_before_allocating(weights, inputs, tmp_path):
    huge = json.dumps({"family": "resnet", "blocks": [64, 64, 64, 64], "channels": [2048] * 4})
    bad = resave(weights, tmp_path / "huge.safetensors", model_config=huge)
    assert bad.stat().st_size < 100_000
    for args in (["predict", str(bad), str(inputs), "-o", str(tmp_path / "p.csv")],
                 ["evaluate", str(bad), "--data", str(inputs), "-o", str(tmp_path / "ev")],
                 ["export", str(bad), "-o", str(tmp_path / "m.onnx")]):
        t0 = time.time()
        r = limited(args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr[-500:]
        assert "trainable parameters, over the limit" in r.stderr and time.time() - t0 < 60
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "ev").exists() and not (tmp_path / "m.onnx").exists()


def test_weights_whose_tensors_do_not_match_their_config(weights, capsys, inputs, tmp_path):
    other = json.dumps({"family": "resnet", "blocks": [1], "channels": [16]})
    bad = resave(weights, tmp_path / "b.safetensors", model_config=other)
    one_line_error(*run_cli(capsys, "predict", str(bad), str(inputs), "-o", str(tmp_path / "p.csv")),
                   "weights do not match the stored model config")
    notjson = resave(weights, tmp_path / "c.safetensors", model_config="{not json")
    one_line_error(*run_cli(capsys, "predict", str(notjson), str(inputs), "-o", str(tmp_path / "p.csv")),
                   "model_config is not JSON")
    badinfo = resave(weights, tmp_path / "d.safetensors", info="[1, 2")
    one_line_error(*run_cli(capsys, "evaluate", str(badinfo), "--data", str(inputs)), "info is not JSON")
    assert not (tmp_path / "p.csv").exists()


# --- 2. pickles that ask for huge allocations ----------------------------------------------------------

class _HugeArray:
    def __reduce__(self):
        return (np.ndarray, ((1 << 40,),))


class _HugeBytearray:
    def __reduce__(self):
        return (bytearray, (1 << 40,))


@pytest.mark.parametrize("obj", [_HugeArray(), _HugeBytearray()], ids=["ndarray", "bytearray"])
def test_tiny_pickle_requesting_a_tebibyte_is_refused(obj, weights, tmp_path):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps({b"data": obj}, protocol=2))
    assert path.stat().st_size < 100
    r = limited(["predict", str(weights), str(path), "-o", str(tmp_path / "p.csv")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "refused" in r.stderr, r.stderr[-500:]
    assert not (tmp_path / "p.csv").exists()


def test_array_shape_larger_than_its_bytes_is_refused(tmp_path):
    from resnet5m.errors import UserError
    from resnet5m.io.safe_pickle import restricted_load

    assert restricted_load(pickle.dumps(np.zeros(4, np.uint8), protocol=5)).shape == (4,)  # a real array loads
    import numpy._core.numeric as numeric

    class Lying:
        def __reduce__(self):
            return (numeric._frombuffer, (bytearray(4), np.dtype("u1"), (1 << 40,), "C"))

    with pytest.raises(UserError, match="does not match its 4 bytes"):
        restricted_load(pickle.dumps(Lying(), protocol=5))


# --- 3. YAML alias bomb -------------------------------------------------------------------------------

def test_yaml_alias_bomb_is_refused_quickly(tmp_path, data_env):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\ndescription: *a9\n")
    t0 = time.time()
    r = limited(["train", "--config", str(tmp_path / "bomb.yaml"), "--runs-dir", str(tmp_path / "runs")], timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expands to more than" in r.stderr, r.stderr[-300:]
    assert time.time() - t0 < 30 and not (tmp_path / "runs").exists()


# --- 4. image headers claiming giant sizes ------------------------------------------------------------------

def test_png_claiming_60000_squared_pixels_is_one_line(weights, capsys, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (tmp_path / "bomb.png").write_bytes(bytes(png))
    one_line_error(*run_cli(capsys, "predict", str(weights), str(tmp_path / "bomb.png")), "bomb.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bytes(png))
    one_line_error(*run_cli(capsys, "predict", str(weights), str(folder), "-o", str(tmp_path / "p.csv")))
    assert not (tmp_path / "p.csv").exists()


# --- 5. tracebacks that are now one line ------------------------------------------------------------------

@pytest.mark.parametrize("content, needle", [
    ({b"data": [[1, 2, 3], [4, 5]]}, "not a regular array"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"ids": [[1], [2, 3]]}, "not a regular array"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"ids": [1, "x", [2]]}, "not a regular array"),
], ids=["ragged-data", "ragged-ids", "mixed-ids"])
def test_ragged_pickles_are_one_line(content, needle, weights, capsys, tmp_path):
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(content, protocol=2))
    one_line_error(*run_cli(capsys, "predict", str(weights), str(tmp_path / "t.pkl"), "-o", str(tmp_path / "p.csv")),
                   needle)
    assert not (tmp_path / "p.csv").exists()


def test_ragged_labels_in_a_cifar_batch_are_one_line(tmp_path, capsys):
    from conftest import build_official_tarball

    def ragged(batches):
        batches["data_batch_2"][b"labels"] = [[1, 2], [3]] + [0] * 10

    build_official_tarball(tmp_path / "cifar-10-python.tar.gz", mutate=ragged)
    one_line_error(*run_cli(capsys, "train", "--data", str(tmp_path / "cifar-10-python.tar.gz"), "--runs-dir",
                            str(tmp_path / "runs")), "b'labels'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, needle", [
    (b"\xff\xfe not utf-8 \x80", "not UTF-8"),
    (b"schedule: {warmup_epochs: .inf}\n", "schedule.warmup_epochs"),
    (b"optimizer: {lr: .nan}\n", "optimizer.lr"),
    (b"name: ..\n", "name"),
], ids=["non-utf8", "inf", "nan", "dotdot-name"])
def test_bad_config_files_are_one_line_and_leave_nothing(text, needle, tmp_path, capsys, data_env):
    (tmp_path / "c.yaml").write_bytes(text)
    one_line_error(*run_cli(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--runs-dir",
                            str(tmp_path / "runs")), needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_base_cycle_and_self_naming_model_yaml(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    one_line_error(*run_cli(capsys, "train", "--config", str(tmp_path / "a.yaml")), "cycle")
    (tmp_path / "m.yaml").write_text("model: m.yaml\n")
    one_line_error(*run_cli(capsys, "summary", str(tmp_path / "m.yaml")), "refers back to itself")


def test_model_path_inside_a_yaml_is_relative_to_that_yaml(tmp_path, capsys, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "net.yaml").write_text("blocks: [1, 1]\nchannels: [8, 16]\n")
    (sub / "run.yaml").write_text("model: net.yaml\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    assert main(["summary", "sub/run.yaml"]) == 0
    assert "trainable params" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-5"])
def test_batch_size_must_be_positive(value, weights, inputs, capsys, tmp_path):
    for cmd in (["predict", str(weights), str(inputs), "-o", str(tmp_path / "p.csv")],
                ["evaluate", str(weights), "--data", str(inputs)]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--batch-size", value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--batch-size" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_output_paths_that_cannot_be_written(weights, inputs, capsys, tmp_path, data_env):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    one_line_error(*run_cli(capsys, "predict", str(weights), str(inputs), "-o", str(tmp_path / "adir")), "is a folder")
    one_line_error(*run_cli(capsys, "predict", str(weights), str(inputs), "-o", str(tmp_path / "afile" / "p.csv")),
                   "is a file, not a folder")
    np.savez(tmp_path / "set.npz", x=np.load(inputs), y=np.arange(6))
    one_line_error(*run_cli(capsys, "evaluate", str(weights), "--data", str(tmp_path / "set.npz"), "--out",
                            str(tmp_path / "afile")), "is a file, not a folder")
    one_line_error(*run_cli(capsys, "export", str(weights), "-o", str(tmp_path / "afile" / "m.onnx")),
                   "is a file, not a folder")
    one_line_error(*run_cli(capsys, "train", "--runs-dir", str(tmp_path / "afile")), "is a file")
    assert (tmp_path / "afile").read_text() == "x" and not any((tmp_path / "adir").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "inputs.npy", "set.npz", "w.safetensors"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(weights, inputs, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    one_line_error(*run_cli(capsys, "predict", str(weights), str(inputs), "-o", str(ro / "p.csv")), "not writable")


# --- 6. run names that escape --runs-dir ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape"])
def test_run_names_cannot_escape_the_runs_dir(name, tmp_path, capsys, data_env):
    runs = tmp_path / "runs"
    code, err = run_cli(capsys, "train", "--runs-dir", str(runs), "--name", name, "--epochs", "0.01")
    one_line_error(code, err)
    assert not (tmp_path / "escape").exists() and sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])


# --- 7. non-finite weights and outputs -----------------------------------------------------------------------

def test_nan_weights_are_refused_and_nothing_is_written(weights, inputs, capsys, tmp_path):
    nan = resave(weights, tmp_path / "nan.safetensors",
                 tensors=lambda s: {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                                    for k, v in s.items()})
    one_line_error(*run_cli(capsys, "predict", str(nan), str(inputs), "-o", str(tmp_path / "p.csv")), "NaN or inf")
    assert not (tmp_path / "p.csv").exists()


def test_overflowing_logits_give_no_submission_and_strict_json(weights, inputs, capsys, tmp_path):
    big = resave(weights, tmp_path / "big.safetensors",
                 tensors=lambda s: {k: (v.clone().fill_(3e38) if k == "head.weight" else v) for k, v in s.items()})
    one_line_error(*run_cli(capsys, "predict", str(big), str(inputs), "-o", str(tmp_path / "p.csv")), "not finite")
    assert not (tmp_path / "p.csv").exists()
    labeled = tmp_path / "set.npz"
    np.savez(labeled, x=np.load(inputs), y=np.arange(6) % 10)
    assert main(["evaluate", str(big), "--data", str(labeled), "--tta", "none", "-o", str(tmp_path / "ev")]) == 0
    text = (tmp_path / "ev" / "evaluation.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in evaluation.json"))
    assert data["modes"]["none"]["loss"] is None and "not finite" in data["note"]


# --- 5b / 8. run directories: damaged resume state, one writer ---------------------------------------------

SMALL_RUN = """model: {blocks: [1], channels: [8]}
data: {val_size: 100, train_subset: 400}
train: {epochs: 2, batch_size: 100, eval_batch_size: 500}
optimizer: {name: sgd, lr: 0.05}
augment: {crop: {padding: 2}}
"""


@pytest.fixture
def interrupted_run(tmp_path, cifar) -> Path:
    """A real run directory stopped after its first epoch (checkpoint written, results not)."""
    from resnet5m.io.rundir import write_config
    from resnet5m.training import Trainer, build_config
    from resnet5m.training.config import config_to_yaml

    (tmp_path / "c.yaml").write_text(SMALL_RUN)
    cfg = build_config(str(tmp_path / "c.yaml"))
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, config_to_yaml(cfg))
    t = Trainer(cfg, cifar, run, out=lambda s: None, progress=False)
    t.epochs = 1  # stop after epoch 1, as a kill right after its checkpoint would
    t.fit()
    return run


def _damage_checkpoint(run: Path, how: str) -> None:
    state = torch.load(run / "resume.pt", weights_only=True)
    if how == "missing":
        del state["optimizers"]
    elif how == "shape":
        key = next(k for k, v in state["model"].items() if v.ndim == 4)
        state["model"][key] = torch.zeros(3, 3)
    elif how == "loop":
        state["loop"]["epoch"] = "one"
    elif how == "recorded":
        state["config"] = "[1, 2"
    elif how == "deep":  # nested past Python's recursion limit
        state["config"] = "[" * 100_000 + "]" * 100_000
    torch.save(state, run / "resume.pt")


@pytest.mark.parametrize("how, needle", [
    ("missing", "missing optimizers"), ("shape", "does not match this run's config"), ("loop", "loop.epoch"),
    ("garbage", "unreadable checkpoint"), ("config", "config.yaml"), ("metrics", "damaged"),
    ("shorter", "train.epochs is 0.5 in its config.yaml but was 2.0 when resume.pt was saved"),
    ("shorter-old", "its checkpoint has 4 steps done, more than the 2 its config.yaml plans"),
    ("lr", "optimizer.lr is 0.1 in its config.yaml but was 0.05 when"),
    ("ema", "but was None when resume.pt was saved"),
    ("recorded", "its recorded config is not resnet5m's"), ("deep", "its recorded config is not resnet5m's"),
])
def test_damaged_resume_state_is_one_line(how, needle, interrupted_run, capsys, data_env):
    run = interrupted_run
    if how == "garbage":
        (run / "resume.pt").write_bytes(b"PK\x03\x04 not really a zip")
    elif how == "config":
        (run / "config.yaml").write_text("train: {epochs: [\n")
    elif how == "metrics":
        (run / "metrics.jsonl").write_text("{not json\n" + (run / "metrics.jsonl").read_text())
    elif how in ("shorter", "shorter-old", "lr", "ema"):  # config.yaml edited after the checkpoint was saved
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text())
        if how == "lr":
            cfg["optimizer"]["lr"] = 0.1
        elif how == "ema":
            cfg["train"]["ema"] = {"decay": 0.99}
        else:
            cfg["train"]["epochs"] = 0.5
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        if how == "shorter-old":  # a checkpoint from before the config was recorded: the step count still guards
            state = torch.load(run / "resume.pt", weights_only=True)
            del state["config"]
            torch.save(state, run / "resume.pt")
    else:
        _damage_checkpoint(run, how)
    one_line_error(*run_cli(capsys, "train", "--resume", str(run), "--no-progress"), needle)
    assert not (run / "results.json").exists()


def test_resume_accepts_edits_that_do_not_change_the_result(interrupted_run, tmp_path, data_env):
    """Labels, the device and the thread count may change between the processes; the result is the same."""
    import yaml

    run = interrupted_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(description="edited label", device="cpu", threads=1, name="renamed", budget=4_000_000,
               eval={"tta": "flip"})
    cfg["train"]["checkpoint_every"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "results.json").exists()


def test_torn_last_metrics_line_is_tolerated_on_resume(interrupted_run, capsys, data_env):
    run = interrupted_run
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "lr": 0.0')  # a torn write of an older version
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_one_writer_per_run_directory(tmp_path, data_env):
    (tmp_path / "c.yaml").write_text(SMALL_RUN.replace("epochs: 2", "epochs: 60"))  # still running at the second
    run = tmp_path / "runs" / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "resnet5m.cli.main", "train", "--resume", str(run), "--no-progress", "--threads", "1"]
    first = subprocess.Popen([*args[:4], "--config", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs"),
                              "--name", "r", *args[6:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / ".lock").exists() and b"pid" in (run / ".lock").read_bytes()):
            time.sleep(0.1)
        second = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2 and "is being trained by pid" in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 130  # the first writer checkpointed and stopped cleanly
    # its lock died with it: the leftover .lock file does not block the next writer
    from resnet5m.io.rundir import lock

    assert (run / ".lock").exists()
    with lock(run):
        pass


def test_runs_dir_creation_has_no_check_then_create_window(tmp_path):
    from resnet5m.errors import UserError
    from resnet5m.io.rundir import new_run_dir

    first = new_run_dir(tmp_path, "r")
    (first / "x").write_text("taken")
    with pytest.raises(UserError, match="already exists"):
        new_run_dir(tmp_path, "r")  # mkdir itself decides, not an earlier exists() check
    assert new_run_dir(tmp_path, None) != new_run_dir(tmp_path, None)


# --- minor ---------------------------------------------------------------------------------------------------

def test_zero_byte_tarball_is_one_line(tmp_path, capsys):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    one_line_error(*run_cli(capsys, "train", "--data", str(tmp_path / "cifar-10-python.tar.gz")), "empty file")


def test_bad_cached_tarball_is_kept_when_the_new_download_fails(tmp_path):
    from resnet5m.data.download import cached_tarball
    from resnet5m.errors import UserError

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"an old, damaged copy")
    with pytest.raises(UserError, match="download failed"):
        cached_tarball(tmp_path, url="http://127.0.0.1:9/cifar.tar.gz", progress=False)
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == b"an old, damaged copy"


# --- the fuzz test ------------------------------------------------------------------------------------------

def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, a cut, inserted or zeroed bytes, a duplicated chunk."""
    b = bytearray(data)
    kind = int(rng.integers(0, 6))
    i = int(rng.integers(0, max(1, len(b))))
    if kind == 0:  # flip a few bytes
        for j in rng.integers(0, len(b), int(rng.integers(1, 9))):
            b[int(j)] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del b[i:]
    elif kind == 2:  # insert garbage
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 3:  # zero a range
        n = int(rng.integers(1, 256))
        b[i:i + n] = bytes(len(b[i:i + n]))
    elif kind == 4:  # duplicate a chunk
        n = int(rng.integers(1, 512))
        b[i:i] = b[i:i + n]
    else:  # flip one bit near the start (headers)
        j = int(rng.integers(0, min(len(b), 256)))
        b[j] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


FUZZ_COUNTS = {"pickle": 70, "npz": 60, "config": 70, "safetensors": 70, "rundir": 30}


def test_fuzz_corrupted_inputs_fail_cleanly(tmp_path, weights, interrupted_run, cifar_path):
    """Randomly corrupted variants of a real pickle, .npz, config, safetensors file and run directory:
    each command either succeeds (the corruption was harmless) or fails with exit 2, one line on
    stderr, no traceback and nothing written, within 60 s, in a process limited to 3 GiB."""
    import shutil

    rng = np.random.default_rng(2026)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, x=images, y=np.arange(8) % 10)
    bases = {
        "pickle": pickle.dumps({b"data": images.transpose(0, 3, 1, 2).reshape(8, 3072), b"ids": list(range(8))},
                               protocol=2),
        "npz": buf.getvalue(),
        "config": (SMALL_RUN + "schedule: {name: cosine, warmup_epochs: 0.5}\nlabel: none\n").encode(),
        "safetensors": weights.read_bytes(),
    }
    np.save(tmp_path / "inputs.npy", images)
    cases = []
    for kind, n in FUZZ_COUNTS.items():
        for i in range(n):
            case_dir = tmp_path / "cases" / f"{kind}{i}"
            case_dir.mkdir(parents=True)
            name = f"{kind}-{i}"
            if kind == "rundir":
                run = case_dir / "run"
                shutil.copytree(interrupted_run, run)
                files = sorted(p for p in run.iterdir() if p.is_file())
                victim = files[int(rng.integers(0, len(files)))]
                victim.write_bytes(_corrupt(victim.read_bytes(), rng))
                argv = ["train", "--resume", str(run), "--no-progress", "--threads", "2"]
                cases.append({"name": f"{name}:{victim.name}", "argv": argv, "watch": str(case_dir), "ok": True})
                continue
            path = case_dir / f"input.{ {'config': 'yaml'}.get(kind, kind if kind != 'pickle' else 'pkl') }"
            path.write_bytes(_corrupt(bases[kind], rng))
            out = case_dir / "out"
            argv = {
                "pickle": ["predict", str(weights), str(path), "-o", str(out / "p.csv")],
                "npz": ["evaluate", str(weights), "--data", str(path), "--tta", "none", "-o", str(out)],
                "config": ["train", "--config", str(path), "--runs-dir", str(out), "--set", "train.batch_size=100000"],
                "safetensors": ["predict", str(path), str(tmp_path / "inputs.npy"), "-o", str(out / "p.csv")],
            }[kind]
            cases.append({"name": name, "argv": argv, "watch": str(case_dir), "ok": kind != "config"})
    (tmp_path / "cases.json").write_text(json.dumps(cases))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    env = {**os.environ, "RESNET5M_DATA": str(cifar_path)}
    worker = Path(__file__).with_name("fuzz_worker.py")
    subprocess.run([sys.executable, str(worker), str(tmp_path / "cases.json"), str(tmp_path / "results.json")],
                   check=True, timeout=1500, preexec_fn=limit, env=env)
    results = json.loads((tmp_path / "results.json").read_text())
    expected = {c["name"]: c for c in cases}
    failures, succeeded = [], 0
    for r in results:
        case = expected[r["name"]]
        if r["escaped"]:
            failures.append(f"{r['name']}: {r['escaped'][-300:]}")
        elif r["code"] == 0 and case["ok"]:
            succeeded += 1
        elif r["code"] != 2 or r["stderr"].count("\n") != 1 or not r["stderr"].startswith("resnet5m: error: "):
            failures.append(f"{r['name']}: exit {r['code']}, stderr {r['stderr'][-300:]!r}")
        elif r["changed"] and not r["name"].startswith("rundir"):
            failures.append(f"{r['name']}: failed but wrote {r['changed']}")
        elif r["seconds"] > 60:
            failures.append(f"{r['name']}: took {r['seconds']:.0f}s")
    assert len(results) == sum(FUZZ_COUNTS.values())
    assert not failures, "\n".join(failures[:20])
    print(f"fuzz: {len(results)} corrupted inputs, {succeeded} harmless (command succeeded), "
          f"{len(results) - succeeded} clean one-line failures")


# --- a second hostile review (2026-12-07): each case below was reproduced before its fix ---------------

def usage_error(capsys, *argv: str, needle: str) -> None:
    """An argparse error: one line naming the value (no usage dump), exit status 2."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "error: " in err and needle in err, err


TINY_TRAIN = ("--set", "data.train_subset=200", "--set", "train.epochs=0.2", "--set", "train.batch_size=100",
              "--set", "eval.tta=none", "--set", "model.widths=[16,32,32]", "--no-progress")


@pytest.mark.parametrize("command", ["summary", "train"])
def test_models_past_the_hard_limit_are_refused_before_building(command, tmp_path, data_env):
    """26 billion parameters (~100 GB): sized on the meta device and refused, in seconds, under 2 GiB."""
    t0 = time.time()
    r = limited([command, "--blocks", "64", "--channels", "2048", "--kernels", "7", "--allow-over-budget",
                 *(["--runs-dir", str(tmp_path / "runs")] if command == "train" else [])])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "over the hard limit of 100,000,000" in r.stderr, r.stderr
    assert time.time() - t0 < 60 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, needle", [
    (("train", "--seeds", "-1"), "seeds must be integers from 0 to 4,294,967,295, got -1"),
    (("train", "--seeds", "0,0"), "seeds must be distinct"),
    (("train", "--seeds", "0,99999999999999999999999"), "got 99999999999999999999999"),
    (("study", "studies/bhat2023", "--seeds", "-3"), "got -3"),
    (("presets", "--budget", "-1"), "must be at least 1, got -1"),
    (("summary", "fast", "--budget", "0"), "must be at least 1, got 0"),
])
def test_bad_seeds_and_budgets_are_one_line(argv, needle, capsys, tmp_path):
    usage_error(capsys, *argv, needle=needle)


@pytest.mark.parametrize("override, needle", [
    ("seed=99999999999999999999999", "seed: Input should be less than or equal to 4294967295"),
    ("data.split_seed=4294967296", "data.split_seed: Input should be less than or equal to 4294967295"),
    ("model.num_classes=2", "model.num_classes: CIFAR-10 has 10 classes (got 2)"),
])
def test_run_config_bounds(override, needle, capsys, tmp_path, data_env):
    one_line_error(*run_cli(capsys, "train", "--runs-dir", str(tmp_path / "runs"), "--set", override), needle)
    assert not (tmp_path / "runs").exists()


def test_weights_with_other_than_ten_classes_are_refused(capsys, tmp_path, inputs):
    path = tmp_path / "w12.safetensors"
    save_weights(path, build_model(parse_model_config({**TINY_MODEL, "num_classes": 12})), {"budget": 5_000_000})
    one_line_error(*run_cli(capsys, "predict", str(path), str(inputs), "-o", str(tmp_path / "p.csv")),
                   "12 output classes", "CIFAR-10's 10")
    assert not (tmp_path / "p.csv").exists()


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(weights, inputs, capsys, tmp_path):
    before = {p: p.read_bytes() for p in (weights, inputs)}
    for argv in (("predict", str(weights), str(inputs), "-o", str(inputs)),
                 ("predict", str(weights), str(inputs), "-o", str(weights)),
                 ("export", str(weights), "-o", str(weights))):
        one_line_error(*run_cli(capsys, *argv), "is this command's input")
    assert all(p.read_bytes() == b for p, b in before.items())


def test_export_of_a_model_with_overflowing_outputs_leaves_nothing(weights, capsys, tmp_path, data_env):
    big = resave(weights, tmp_path / "big.safetensors",
                 tensors=lambda s: {k: (v.fill_(3e38) if k.startswith("head.") else v) for k, v in s.items()})
    one_line_error(*run_cli(capsys, "export", str(big), "-o", str(tmp_path / "new" / "sub" / "m.onnx")),
                   "outputs are not finite", "not exported")
    assert not (tmp_path / "new").exists()


def test_npz_members_that_are_not_arrays_are_refused_unread(weights, capsys, tmp_path):
    import zipfile

    path = tmp_path / "x.npz"
    np.savez(path, data=np.zeros((2, 32, 32, 3), np.uint8))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("junk", b"\0" * 1000)  # numpy would read such a member whole, whatever its size
    one_line_error(*run_cli(capsys, "predict", str(weights), str(path), "-o", str(tmp_path / "p.csv")),
                   "member 'junk' is not an .npy array")


def test_tarball_members_are_size_checked_before_reading(tmp_path, monkeypatch):
    import tarfile

    from resnet5m.data import sources
    from resnet5m.errors import UserError

    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 4096
        tar.addfile(info, io.BytesIO(b"\0" * 4096))
    monkeypatch.setattr(sources, "MAX_BATCH_BYTES", 1024)  # the real limit is 64 MiB: the same check, smaller
    with pytest.raises(UserError, match="holds 4,096 bytes .* limit 1,024"):
        sources.load_path(path)
    monkeypatch.setattr(sources, "MAX_ARCHIVE_BYTES", 2048)
    with pytest.raises(UserError, match="holds more than 2,048 bytes uncompressed"):
        sources.load_path(path)


def test_a_fifo_is_refused_instead_of_blocking(weights, capsys, tmp_path):
    fifo = tmp_path / "in.npy"
    os.mkfifo(fifo)
    one_line_error(*run_cli(capsys, "predict", str(weights), str(fifo), "-o", str(tmp_path / "p.csv")),
                   "not a regular file")
    one_line_error(*run_cli(capsys, "evaluate", str(weights), "--data", str(fifo)), "not a regular file")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cifar_path) -> Path:
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", "--data", str(cifar_path), "--runs-dir", str(root), "--name", "r", *TINY_TRAIN]) == 0
    return root / "r"


def _damage(run: Path, how: str) -> None:
    results = json.loads((run / "results.json").read_text())
    if how == "config":
        (run / "config.yaml").write_text("- a\n")
    elif how == "results":
        (run / "results.json").write_text('{"test_acc": "x"}')
    else:
        results["confusion"] = [[1]] if how == "confusion" else [["a"] * 10] * 10
        (run / "results.json").write_text(json.dumps(results))


@pytest.mark.parametrize("how, needle", [("config", "AttributeError"), ("results", "KeyError"),
                                         ("confusion", "IndexError"), ("confusion-text", "ValueError")])
def test_report_of_a_damaged_run_is_one_line_and_writes_nothing(how, needle, finished_run, capsys, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _damage(run, how)
    one_line_error(*run_cli(capsys, "report", str(run), "-o", str(tmp_path / "out" / "rep")),
                   "damaged or foreign run files", needle, "nothing written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output folder, no staging folder


def test_report_of_a_search_folder_never_opens_the_storage_its_file_names(tmp_path):
    from resnet5m.reporting.search_report import _try_load

    planted = tmp_path / "elsewhere" / "planted.db"
    planted.parent.mkdir()
    meta = {"name": "s", "storage": f"sqlite:///{planted}"}
    assert _try_load(tmp_path, meta) is None and not planted.exists()  # the snapshot is used instead
    assert _try_load(tmp_path, {"name": "s", "storage": "default"}) is None and not (tmp_path / "study.db").exists()


@pytest.mark.parametrize("argv, needle", [
    (("--objectives", "bogus"), "--objectives: objectives must be"),
    (("--storage", "bogus"), "not a database URL"),
    (("--storage", "mysql://u@127.0.0.1/db"), "the database driver is not installed"),
])
def test_search_refusals_leave_no_study_folder(argv, needle, capsys, tmp_path, data_env):
    one_line_error(*run_cli(capsys, "search", "search/quick-real", "--runs-dir", str(tmp_path / "s"), "--trials", "1",
                            *argv), needle)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("study, needle", [
    ("name: bigstudy\nbase: fast\nvariants:\n  a: {model: {widths: [512, 1024, 1024]}}\n",
     "variant 'a': model (fastnet) has 37,103,128 trainable parameters, over the budget"),
    ("name: ..\nbase: fast\nvariants:\n  a: {train: {batch_size: 100}}\n", "name: must not be '.' or '..'"),
    ("name: s2\nbase: fast\nvariants:\n  a: {}\n  b: {train: {init_from: /nonexistent/run}}\n",
     "variant 'b': train.init_from: /nonexistent/run: no such run directory or weights file"),
])
def test_study_refusals_write_nothing(study, needle, capsys, tmp_path, data_env):
    (tmp_path / "s.yaml").write_text(study)
    one_line_error(*run_cli(capsys, "study", str(tmp_path / "s.yaml"), "--runs-dir", str(tmp_path / "in" / "runs")),
                   needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_report_into_a_path_under_a_file_is_one_line(finished_run, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(*run_cli(capsys, "report", str(finished_run), "-o", str(tmp_path / "afile" / "sub")),
                   "afile is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# --- a third hostile review (2026-12-07): training values and the benchmark scripts -----------------------

@pytest.mark.parametrize("overrides, needle", [
    (("augment.crop.size=40",), "size 40 is larger than the padded image (32 + 2 x padding 2 = 36 px)"),
    (("augment.blur.sigma=[0,0]",), "augment.blur.sigma: must be 0 < low <= high"),
    (("train.resolution_schedule=[{until_epoch: 0.1, size: 8}]",), "images of 8 px"),
])
def test_training_values_that_would_crash_later_are_one_line(overrides, needle, capsys, tmp_path, data_env):
    sets = [a for o in overrides for a in ("--set", o)]
    one_line_error(*run_cli(capsys, "train", "--config", "fast", *TINY_TRAIN, *sets, "--runs-dir", str(tmp_path / "r")),
                   needle)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory, cifar_path) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    assert main(["train", "--data", str(cifar_path), "--runs-dir", str(root), "--name", "s", "--seeds", "0,1",
                 "--config", "fast", *TINY_TRAIN]) == 0
    return root / "s"


def test_resume_refuses_a_config_edited_between_seeds(two_seed_run, capsys, tmp_path, data_env):
    """One recipe for every seed of a run: an edit after a seed trained is refused, even where no seed has a
    checkpoint to compare with (a finished seed, or one not started)."""
    import shutil

    import yaml

    run = tmp_path / "s"
    shutil.copytree(two_seed_run, run)
    shutil.rmtree(run / "seed1")  # seed 1 not started yet: it alone would train with the edit
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["optimizer"]["lr"] *= 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    one_line_error(*run_cli(capsys, "train", "--resume", str(run)), "but seed 0 was trained with")
    assert not (run / "seed1").exists()


@pytest.mark.parametrize("seeds", ["[0, 0]", "[true]", "[]", "[1099511627776]"])
def test_resume_checks_seeds_json_like_the_seeds_flag(seeds, two_seed_run, capsys, tmp_path, data_env):
    import shutil

    run = tmp_path / "s"
    shutil.copytree(two_seed_run, run)
    (run / "seeds.json").write_text(f'{{"seeds": {seeds}}}')
    one_line_error(*run_cli(capsys, "train", "--resume", str(run)), "distinct integers from 0 to 4294967295")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("seed")) == ["seed0", "seed1", "seeds.json"]


def test_resume_refuses_the_flags_it_would_ignore(two_seed_run, capsys):
    one_line_error(*run_cli(capsys, "train", "--resume", str(two_seed_run), "--blocks", "9,9", "--compile"),
                   "drop --blocks, --compile")
    usage_error(capsys, "train", "--resume", str(two_seed_run), "--threads", "0", needle="must be from 1 to 256, got 0")


def test_nproc_and_inference_batch_sizes_are_bounded(weights, inputs, capsys):
    one_line_error(*run_cli(capsys, "train", "--nproc", "1000000"), "--nproc 1000000: at most")
    usage_error(capsys, "evaluate", str(weights), "--batch-size", "1000000000000", needle="must be from 1 to 16,384")
    usage_error(capsys, "predict", str(weights), str(inputs), "--batch-size", "20000",
                needle="must be from 1 to 16,384")


@pytest.mark.parametrize("argv, needle", [
    (("gpu_suite.py",), "the following arguments are required: command"),
    (("gpu_suite.py", "run", "--budget-s", "nan"), "must be a positive, finite number of seconds"),
    (("race.py", "--table-only", "--out", "BAD"), "a JSON input is not valid JSON"),
    (("time_to_accuracy.py", "--seeds", "5,5"), "seeds must be distinct"),
])
def test_benchmark_script_errors_are_one_line(argv, needle, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    script, *rest = argv
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    r = subprocess.run([sys.executable, str(bench / script), *[str(bad) if a == "BAD" else a for a in rest]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith(f"{script}: error: "), r.stderr
    assert needle in r.stderr, r.stderr


def test_error_lines_show_control_characters_as_question_marks():
    """A hostile file's NUL or terminal escape codes never reach the terminal through an error line."""
    from resnet5m.cli.main import one_line

    assert one_line("bad value a\x00b\x1b[31mred\u200b ±") == "bad value a?b?[31mred? ±"


def test_a_setting_added_since_a_checkpoint_is_not_an_edit():
    """A checkpoint's config fingerprint holds every key of its resnet5m version (unset ones as None); a key
    added by a later version is not counted as an edit, so upgrading does not strand a stopped run."""
    from resnet5m.training.config import first_difference

    saved = {"train": {"epochs": 2.0, "ema": None}, "seed": 0}
    assert first_difference(saved, {"train": {"epochs": 2.0, "ema": None, "new_knob": True}, "seed": 0}) is None
    assert first_difference(saved, {"train": {"epochs": 2.0, "ema": {"decay": 0.9}}, "seed": 0}) == (
        "train.ema", None, {"decay": 0.9})
