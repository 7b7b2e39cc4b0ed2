"""Progress output degrades to plain lines without a TTY and never crashes on odd streams."""

from __future__ import annotations

import io

from resnet5m.training.progress import EpochProgress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Broken(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


def test_plain_lines_without_a_tty():
    out = io.StringIO()
    p = EpochProgress(0, 3, 4, stream=out, interval_s=0.0)
    for _ in range(4):
        p.update(1, 128, 0.5, 0.1)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(ln.startswith("  epoch 1/3:") and "img/s" in ln for ln in lines)
    assert "\r" not in out.getvalue()


def test_bar_on_a_tty():
    out = FakeTTY()
    p = EpochProgress(1, 3, 4, stream=out)
    for _ in range(4):
        p.update(1, 128, 0.5, 0.1)
    p.close()
    assert "epoch 2/3" in out.getvalue() and "\r" in out.getvalue()


def test_broken_stream_and_disabled_progress_do_not_crash():
    p = EpochProgress(0, 1, 2, stream=Broken(), interval_s=1e9)
    p.update(1, 1, 0.1, 0.1)
    p.close()
    quiet = io.StringIO()
    q = EpochProgress(0, 1, 2, stream=quiet, interval_s=0.0, enabled=False)
    q.update(1, 1, 0.1, 0.1)
    q.close()
    assert quiet.getvalue() == ""
