"""Shared fixtures: the real CIFAR-10 (from ../shared or $RESNET5M_DATA) and tiny official-format archives."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def real_data_path() -> Path | None:
    env = os.environ.get("RESNET5M_DATA")
    for candidate in (env, REPO.parent / "shared" / "data" / "cifar10.npz"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    path = real_data_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("real CIFAR-10 not found: set RESNET5M_DATA or put ../shared/data/cifar10.npz beside the repo")
        pytest.skip("real CIFAR-10 not available (set RESNET5M_DATA)")
    return path


@pytest.fixture
def data_env(cifar_path, monkeypatch) -> Path:
    """Point RESNET5M_DATA at the real data, for code (and subprocesses) that resolve it themselves."""
    monkeypatch.setenv("RESNET5M_DATA", str(cifar_path))
    return cifar_path


@pytest.fixture(scope="session")
def cifar(cifar_path):
    from resnet5m.data import load_cifar10

    return load_cifar10(cifar_path)


def make_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def build_official_tarball(path: Path, n_per_batch: int = 12, mutate=None) -> dict:
    """Write a small archive in the official cifar-10-python.tar.gz layout; return the batches."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: make_batch(n_per_batch, i) for i, name in enumerate(names)}
    if mutate:
        mutate(batches)
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        meta = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return batches


@pytest.fixture
def tiny_tarball(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "cifar-10-python.tar.gz"
    return path, build_official_tarball(path)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's real cache or download anything by accident."""
    monkeypatch.setenv("RESNET5M_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # a run with `threads: N` in its config sets it for the whole process
