"""Shared helpers for the benchmark scripts: machine description, peak FLOP/s, JSON output, timed steps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from resnet5m.errors import UserError
from resnet5m.io.rundir import write_json as write_json_file
from resnet5m.training.loop import StepParts, train_step
from resnet5m.training.losses import make_loss

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    """The checkout's commit (``RESNET5M_COMMIT`` where the code runs from a copy without .git)."""
    if os.environ.get("RESNET5M_COMMIT"):
        return os.environ["RESNET5M_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measure_peak_flops(device: torch.device, n: int = 4096, dtype: torch.dtype = torch.float32,
                       repeats: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul (the practical peak for this device and dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``path`` atomically, as strict JSON."""
    write_json_file(Path(path), data)
    return Path(path)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def timed_steps(model: torch.nn.Module, opts: list, batches, steps: int, warmup: int, device: torch.device,
                prepare) -> dict[str, float]:
    """Time ``steps`` training steps (the package's own ``train_step``) after ``warmup`` untimed ones.
    ``prepare(batch) -> (x, y)`` moves and finishes a batch; its time counts as data time. Returns
    images/s and the data share of step time."""
    parts = StepParts(model=model, optimizers=opts, loss=make_loss(0.0), device=device)
    total = data_time = 0.0
    images = 0
    it = iter(batches)
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        x, y = prepare(next(it))
        sync(device)
        t1 = time.perf_counter()
        train_step(parts, i, x, y)
        sync(device)
        if i >= warmup:
            total += time.perf_counter() - t0
            data_time += t1 - t0
            images += len(y)
    return {"images_per_s": images / total, "data_share": data_time / total, "images": images}


MAX_RESULTS_BYTES = 256 * 2**20  # the largest results file read (ours are kilobytes to a few megabytes)


def read_json(path: Path) -> Any:
    """A results file a user named: a regular file (a FIFO would block forever), at most
    :data:`MAX_RESULTS_BYTES`, parsed (errors become one line under :func:`reading_results`)."""
    import json

    from resnet5m.data.sources import require_regular_file

    path = Path(path)
    require_regular_file(path)
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes; a results file is at most {MAX_RESULTS_BYTES:,}")
    return json.loads(path.read_text())


@contextmanager
def reading_results(path: Path | str) -> Iterator[None]:
    """Around the code that interprets a results file a user named (``--merge``, ``--table-only``,
    ``--compare``, an existing ``--out`` to continue): valid JSON of another shape (another script's file, a
    list, a field missing) is one line naming the file and the first thing missing, not a traceback."""
    import json

    try:
        yield
    except json.JSONDecodeError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, ArithmeticError, RecursionError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:80] if str(exc) else ""
        raise UserError(f"{path}: not a results file of this script ({type(exc).__name__}: {what})") from None


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's ``main()`` as the CLI does: an expected failure (a bad value, a missing file) is one line
    on stderr naming it, exit 2, no traceback; Ctrl-C or SIGTERM is one line and exit 130 (results already
    appended stay: every script writes per seed or pair)."""
    import json

    from resnet5m.cli.main import one_line, os_error_line
    from resnet5m.training.checkpoint import TrainingInterrupted

    name = Path(sys.argv[0]).name
    try:
        main()
    except UserError as exc:
        print(f"{name}: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system said no (a missing input, a folder where a file should be)
        print(f"{name}: error: {os_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except json.JSONDecodeError as exc:  # a results file given to --merge, --compare or --table-only
        print(f"{name}: error: a JSON input is not valid JSON ({exc.msg} at line {exc.lineno})", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, TrainingInterrupted):
        print(f"{name}: interrupted; the results written so far are kept", file=sys.stderr)
        sys.exit(130)
