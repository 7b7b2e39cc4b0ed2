"""Runs many CLI invocations in one process (the test starts it under an address-space limit) and
records, for each: exit code, stderr, whether a traceback escaped, the files it left, its duration.

    python tests/fuzz_worker.py CASES.json RESULTS.json
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import time
import traceback
from pathlib import Path


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ANN001
    raise _Timeout


def _files(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def run_case(case: dict) -> dict:
    from resnet5m.cli.main import main

    watch = Path(case["watch"])
    before = _files(watch)
    err = io.StringIO()
    code, escaped, t0 = None, None, time.time()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(case.get("timeout", 60))
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(case["argv"])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    except _Timeout:
        escaped = "timeout"
    except BaseException:  # noqa: BLE001 - anything that escapes main() is a finding
        escaped = traceback.format_exc()[-2000:]
    finally:
        signal.alarm(0)
    after = _files(watch)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    return {"name": case["name"], "code": code, "stderr": err.getvalue()[-2000:], "escaped": escaped,
            "changed": changed, "seconds": time.time() - t0}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = [run_case(c) for c in cases]
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
