"""``resnet5m search --workers 2`` against a real PostgreSQL server that this test session starts itself:
trial numbers stay unique, no result is lost, and a worker SIGKILLed mid-trial does not leave the study
stuck (its heartbeat goes stale, the trial is failed and retried, the other worker finishes the study).

Skipped only when the PostgreSQL server binaries are absent and $CI is unset; in CI a server that cannot
be installed or started is a failure (.ci/run installs Debian's postgresql package when it is missing).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from resnet5m.io import rundir

SPACE = {
    "base": "standard",
    "set": {"model": {"blocks": [1, 1], "channels": [8, 16]}, "data.val_size": 500, "data.train_subset": 2000,
            "train.epochs": 3, "train.batch_size": 100, "train.eval_batch_size": 2000},
    "params": {"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True},
               "model.channels": {"choices": [[8, 16], [16, 32]]}},
    "sampler": {"seed": 0},
}
TRIALS = 6


def unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {why}")
    pytest.skip(why)


def pg_bin() -> Path | None:
    """The folder of initdb, pg_ctl and createdb: Debian's /usr/lib/postgresql/N/bin (newest), else PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_server_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as an unprivileged user then."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--", *cmd]
    return ["su", "nobody", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("optuna")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        unavailable("psycopg2 is not installed")
    bindir = pg_bin()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="resnet5m-pg-", dir="/tmp"))  # /tmp: reachable by the server user
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
    data, sock, log, port = root / "data", root / "sock", root / "server.log", free_port()
    run = dict(cwd=root, capture_output=True, text=True, timeout=120)
    try:
        r = subprocess.run(as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                           "--auth=trust", "--no-sync"]), **run)
        if r.returncode != 0:
            unavailable(f"initdb failed: {(r.stderr or r.stdout)[-400:]}")
        sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(sock, "nobody")
        r = subprocess.run(as_server_user([
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-k {sock} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off", "start"]), **run)
        if r.returncode != 0:
            unavailable(f"pg_ctl start failed: {r.stderr[-300:]} {log.read_text()[-400:] if log.exists() else ''}")
        r = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "resnet5m"], **run)
        if r.returncode != 0:
            unavailable(f"createdb failed: {r.stderr[-300:]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/resnet5m"
    finally:
        subprocess.run(as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       **run)
        shutil.rmtree(root, ignore_errors=True)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def worker_pid(parent: int, index: int) -> int | None:
    for pid in children(parent):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker" in argv and argv[argv.index(b"--worker") + 1] == str(index).encode():
            return pid
    return None


def test_two_workers_postgres_survive_a_killed_worker(postgres_url, tmp_path, data_env):
    import optuna

    from resnet5m.reporting.search_report import driver_url

    space = tmp_path / "pg.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet5m.cli.main", "search", str(space), "--workers", "2", "--trials", str(TRIALS),
         "--storage", postgres_url, "--study", "pgtest", "--runs-dir", str(runs), "--heartbeat", "1",
         "--pruner", "none", "--threads", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    killed = None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and proc.poll() is None:
        started = [ln for ln in list(lines) if ln.startswith("[worker 1] trial ") and " params, " in ln]
        if started:  # worker 1 has just started training a trial: kill it mid-trial
            time.sleep(0.5)
            pid = worker_pid(proc.pid, 1)
            assert pid is not None, lines
            os.kill(pid, signal.SIGKILL)
            killed = int(started[0].split()[3].rstrip(":"))
        time.sleep(0.05)
    assert killed is not None, "".join(lines)
    assert proc.wait(timeout=300) == 0, "".join(lines)
    reader.join(timeout=10)
    out = "".join(lines)
    assert "worker 1 exited with code -9" in out and "despite the failed worker" in out, out

    study = optuna.load_study(study_name="pgtest", storage=driver_url(postgres_url))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == numbers[-1] + 1  # unique, none missing
    states = {t.number: t.state.name for t in trials}
    assert states[killed] == "FAIL", states  # its heartbeat went stale
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", states
    assert retries[0].params == study.trials[killed].params
    assert "RUNNING" not in states.values() and "WAITING" not in states.values(), states
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == TRIALS, states
    for t in done:  # no lost results: storage and run directory agree
        results = rundir.read_results(runs / "pgtest" / "trials" / f"trial-{t.number}")
        assert results["best_val_acc"] == t.value and results["test_acc"] is None
    snapshot = json.loads((runs / "pgtest" / "trials.json").read_text())
    assert len(snapshot["trials"]) == len(trials)
    assert (runs / "pgtest" / "report.html").is_file() and (runs / "pgtest" / "best.yaml").is_file()
    meta = json.loads((runs / "pgtest" / "search.json").read_text())
    assert meta["storage"].startswith("postgresql://")
