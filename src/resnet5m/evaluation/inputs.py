"""Unlabeled inputs for prediction: the course's pickled test sets, .npz/.npy arrays, image folders,
single images. Everything is validated and returned as uint8 NCHW 32x32 plus an id per image.

Pickles from users are untrusted: they go through the restricted unpickler (plain containers,
numbers, bytes/str and numpy arrays only), so a pickle that would run code is refused unread.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet5m.data.cifar10 import as_array, to_nchw
from resnet5m.data.sources import read_npy, read_npz, require_regular_file
from resnet5m.errors import UserError
from resnet5m.io.safe_pickle import restricted_load

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".p")


@dataclass(frozen=True)
class Inputs:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    ids: list[Any]
    source: str


def _finish(data: np.ndarray, ids: Any, where: str) -> Inputs:
    images = to_nchw(as_array(data, f"{where}: images"), where)
    if len(images) == 0:
        raise UserError(f"{where}: contains no images")
    if ids is None:
        ids_list: list[Any] = list(range(len(images)))
    else:
        ids_arr = as_array(ids, f"{where}: ids")
        if ids_arr.ndim != 1:
            raise UserError(f"{where}: ids have shape {tuple(ids_arr.shape)}, expected one id per image")
        ids_list = [i.decode() if isinstance(i, bytes) else (i.item() if hasattr(i, "item") else i)
                    for i in ids_arr.tolist()]
        if len(ids_list) != len(images):
            raise UserError(f"{where}: {len(ids_list)} ids but {len(images)} images")
    return Inputs(torch.from_numpy(np.ascontiguousarray(images)), ids_list, where)


def _get(d: dict, *names: str) -> Any:
    for n in names:
        for key in (n.encode(), n):
            if key in d:
                return d[key]
    return None


def load_pickle(path: Path) -> Inputs:
    obj = restricted_load(str(path), name=str(path))
    if isinstance(obj, np.ndarray):
        return _finish(obj, None, str(path))
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict with b'data' (and optionally b'ids'), got {type(obj).__name__}")
    data = _get(obj, "data")
    if data is None:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise UserError(f"{path}: no b'data' key (keys: {keys})")
    return _finish(data, _get(obj, "ids", "id"), str(path))


def load_npz(path: Path) -> Inputs:
    arrays = read_npz(path)
    data_key = next((k for k in ("data", "x", "images", "x_test") if k in arrays), None)
    if data_key is None:
        raise UserError(f"{path}: no 'data', 'x', 'images' or 'x_test' array (has {', '.join(arrays) or 'none'})")
    ids_key = next((k for k in ("ids", "id") if k in arrays), None)
    return _finish(arrays[data_key], arrays[ids_key] if ids_key else None, str(path))


def load_npy(path: Path) -> Inputs:
    return _finish(read_npy(path), None, str(path))


MAX_IMAGE_PIXELS = 4096 * 4096  # far past any photo worth shrinking to 32x32; a header claiming more is refused


def read_image(path: Path) -> np.ndarray:
    """One image file -> (3, 32, 32) uint8, resized (bilinear) with a warning if it is not 32x32."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise UserError(f"{path}: {im.size[0]}x{im.size[1]} pixels, over the limit of {MAX_IMAGE_PIXELS:,} "
                                "for 32x32 work; refused")
            im = im.convert("RGB")
            if im.size != (32, 32):
                warnings.warn(f"{path.name}: {im.size[0]}x{im.size[1]} resized to 32x32", stacklevel=2)
                im = im.resize((32, 32), Image.Resampling.BILINEAR)
            return np.array(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise UserError(f"{path}: unreadable image ({str(exc).splitlines()[0][:160]})") from None


def load_image_folder(folder: Path) -> Inputs:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = np.stack([read_image(p) for p in files])
    return Inputs(torch.from_numpy(images), [p.name for p in files], str(folder))


def load_inputs(path: str | Path) -> Inputs:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    require_regular_file(p)
    if p.is_dir():
        return load_image_folder(p)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return load_pickle(p)
    if suffix == ".npz":
        return load_npz(p)
    if suffix == ".npy":
        return load_npy(p)
    if suffix in IMAGE_SUFFIXES:
        return Inputs(torch.from_numpy(read_image(p)[None]), [p.name], str(p))
    raise UserError(f"{p}: unsupported input; use a .pkl test set, .npz/.npy, an image file or a folder of images")
