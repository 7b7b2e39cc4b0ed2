"""CIFAR-10 in memory: uint8 tensors, validated once at load time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from resnet5m.errors import UserError

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
NUM_CLASSES = len(CLASSES)

# True per-channel statistics of the 50,000 training images (x/255).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
# The widely copied (kuangliu/pytorch-cifar) std, which is really a mean per-image std.
REFERENCE_PROJECTS_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class Cifar10:
    """The dataset as uint8 NCHW image tensors and int64 label tensors."""

    train_images: torch.Tensor  # (50000, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (50000,) int64
    test_images: torch.Tensor  # (10000, 3, 32, 32) uint8
    test_labels: torch.Tensor  # (10000,) int64
    source: str

    def __repr__(self) -> str:
        return (f"Cifar10(train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"source={self.source!r})")


def as_array(value: object, what: str) -> np.ndarray:
    """``np.asarray`` for values read from users' files: ragged or mixed lists are a one-line error."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"{what} is not a regular array ({str(exc).splitlines()[0][:100]})") from None
    if arr.dtype.hasobject:
        raise UserError(f"{what} is not a regular array (mixed or ragged values)")
    return arr


def check_images(x: np.ndarray, what: str, layout: str = "NHWC") -> None:
    """Raise a one-line :class:`UserError` unless ``x`` is a uint8 batch of 32x32 RGB images."""
    expected = "(N, 32, 32, 3)" if layout == "NHWC" else "(N, 3, 32, 32)"
    shape_ok = x.ndim == 4 and (x.shape[1:] == (32, 32, 3) if layout == "NHWC" else x.shape[1:] == (3, 32, 32))
    if not shape_ok:
        raise UserError(f"{what} has shape {tuple(x.shape)}, expected {expected}")
    if x.dtype != np.uint8:
        raise UserError(f"{what} has dtype {x.dtype}, expected uint8 (pixel values 0..255)")
    if len(x) == 0:
        raise UserError(f"{what} is empty")


def check_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Validate labels (1-D integers in 0..9, one per image) and return them as int64."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise UserError(f"{what} has shape {tuple(y.shape)}, expected a 1-D array of {n} labels")
    if y.dtype.kind not in "iu":
        raise UserError(f"{what} has dtype {y.dtype}, expected integer labels 0..9")
    if len(y) != n:
        raise UserError(f"{what} has {len(y)} labels but there are {n} images")
    if n and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise UserError(f"{what} has labels outside 0..9 (min {int(y.min())}, max {int(y.max())})")
    return y.astype(np.int64)


def to_nchw(data: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 (N, 3, 32, 32) from (N, 3072) channel-first rows (the official batches, the course's
    2024 test file), (N, 32, 32, 3) HWC (the .npz layout, the 2025 file), (N, 3, 32, 32), or one (32, 32, 3)."""
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise UserError(f"{where}: images have dtype {data.dtype}, expected uint8 pixel values 0..255")
    if data.ndim == 2 and data.shape[1] == 3072:
        return data.reshape(-1, 3, 32, 32)
    if data.ndim == 4 and data.shape[1:] == (32, 32, 3):
        return data.transpose(0, 3, 1, 2)
    if data.ndim == 4 and data.shape[1:] == (3, 32, 32):
        return data
    if data.ndim == 3 and data.shape == (32, 32, 3):
        return data.transpose(2, 0, 1)[None]
    raise UserError(f"{where}: images have shape {tuple(data.shape)}; expected (N, 3072) channel-first rows, "
                    "(N, 32, 32, 3) HWC or (N, 3, 32, 32)")


def from_arrays(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                source: str, layout: str = "NHWC") -> Cifar10:
    """Validate numpy arrays and wrap them as a :class:`Cifar10` (NCHW uint8 torch tensors)."""
    for x, key in ((x_train, "x_train"), (x_test, "x_test")):
        check_images(x, f"{source}: {key}", layout)
    y_tr = check_labels(y_train, len(x_train), f"{source}: y_train")
    y_te = check_labels(y_test, len(x_test), f"{source}: y_test")

    def tensor(x: np.ndarray, key: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(to_nchw(x, f"{source}: {key}")))

    return Cifar10(tensor(x_train, "x_train"), torch.from_numpy(y_tr), tensor(x_test, "x_test"), torch.from_numpy(y_te),
                   source)
