"""Atomic writes, checkpoints loaded without running code, the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from resnet5m.errors import UserError
from resnet5m.io import atomic_path, atomic_write_text, restricted_load
from resnet5m.training.checkpoint import load_checkpoint, save_checkpoint


def test_atomic_write_replaces_or_keeps(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "one")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("killed")
    assert p.read_text() == "one"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]
    old = os.umask(0o022)
    try:
        atomic_write_text(p, "two")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644  # normal permissions, not mkstemp's 0600


def _checkpoint() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"loop": {"epoch": 3, "partial": {"loss_sum": 1.5}}, "model": model.state_dict(),
            "optimizers": [opt.state_dict()], "schedule": {"plateau": None}, "average": None, "scaler": {},
            "rng": {"torch": torch.get_rng_state()}}


def test_checkpoint_round_trip(tmp_path):
    state = _checkpoint()
    save_checkpoint(tmp_path / "resume.pt", state)
    back = load_checkpoint(tmp_path / "resume.pt")
    assert back["loop"] == state["loop"] and torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert 0 in back["optimizers"][0]["state"]  # int keys survive
    buf = state["optimizers"][0]["state"][0]["momentum_buffer"]
    assert torch.equal(back["optimizers"][0]["state"][0]["momentum_buffer"], buf)
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]  # written atomically, no leftovers


def test_checkpoint_loading_runs_no_code(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 2, "x": Evil()}, tmp_path / "resume.pt")
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "resume.pt")
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"garbage", "unreadable checkpoint"),
    (None, "not a resnet5m checkpoint"),
    ("missing", r"damaged checkpoint \(missing rng\)"),
])
def test_damaged_checkpoint_is_one_line(tmp_path, content, message):
    p = tmp_path / "resume.pt"
    if content is None:
        torch.save({"format": 99}, p)
    elif content == "missing":
        state = _checkpoint()
        del state["rng"]
        save_checkpoint(p, state)
    else:
        p.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(p)


def test_restricted_unpickler_admits_arrays_and_refuses_code(tmp_path):
    data = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"ids": [1, 2], "x": (1.5, None)}
    for proto in (2, 4, 5):
        back = restricted_load(pickle.dumps(data, protocol=proto))
        assert np.array_equal(back[b"data"], data[b"data"]) and back[b"ids"] == [1, 2]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with pytest.raises(UserError, match="refused global posix.system|refused global os.system"):
        restricted_load(pickle.dumps({"a": Evil()}), name="evil.pkl")
    assert not marker.exists()
    with pytest.raises(UserError, match="not a plain numeric type"):
        restricted_load(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(UserError, match="truncated or corrupt"):
        restricted_load(pickle.dumps(data)[:20])
