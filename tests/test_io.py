"""Atomic writes, code-free state files, the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from resnet5m.errors import UserError
from resnet5m.io import atomic_path, atomic_write_text, restricted_load
from resnet5m.io.state import load_state, save_state


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


def test_state_round_trip_keeps_types(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3, "t": (1, 2.5, None, "x"),
             "flags": [True, False], "dtype": torch.float32}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["t"] == (1, 2.5, None, "x") and back["dtype"] is torch.float32
    assert torch.equal(back["rng"], state["rng"])
    assert 0 in back["opt"]["state"]  # int keys survive
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(back["opt"])
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], buf)


def test_damaged_state_file(tmp_path):
    p = tmp_path / "s.safetensors"
    p.write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable state file"):
        load_state(p)


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
    with pytest.raises(UserError, match="object arrays are not allowed"):
        restricted_load(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(UserError, match="truncated or corrupt"):
        restricted_load(pickle.dumps(data)[:20])
