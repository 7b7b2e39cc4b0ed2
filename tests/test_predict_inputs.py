"""Unlabeled inputs for `predict`: both course pickle layouts, npz/npy, images, and every bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from resnet5m.errors import UserError
from resnet5m.evaluation.inputs import load_inputs


def chw_rows(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def dump(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_2024_layout_channel_first_rows(tmp_path):
    rows = chw_rows()
    inp = load_inputs(dump(tmp_path / "cifar_test_nolabels.pkl", {b"data": rows, b"ids": np.arange(100, 105)}))
    assert inp.images.shape == (5, 3, 32, 32)
    assert np.array_equal(inp.images[2].numpy(), rows[2].reshape(3, 32, 32))
    assert inp.ids == [100, 101, 102, 103, 104]


def test_2025_layout_hwc_and_both_layouts_agree(tmp_path):
    rows = chw_rows()
    hwc = rows.reshape(5, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    a = load_inputs(dump(tmp_path / "cifar_test_nolabel.pkl", {b"data": hwc, b"ids": [7, 8, 9, 10, 11]}))
    b = load_inputs(dump(tmp_path / "rows.pkl", {b"data": rows}))
    assert np.array_equal(a.images.numpy(), b.images.numpy())
    assert a.ids == [7, 8, 9, 10, 11]


def test_missing_ids_default_to_range_and_str_keys_work(tmp_path):
    inp = load_inputs(dump(tmp_path / "t.pkl", {"data": chw_rows(3)}, protocol=2))
    assert inp.ids == [0, 1, 2]


def test_npz_npy_and_image_folder(tmp_path):
    rows = chw_rows(4)
    np.savez(tmp_path / "t.npz", data=rows, ids=np.array([5, 6, 7, 8]))
    assert load_inputs(tmp_path / "t.npz").ids == [5, 6, 7, 8]
    np.save(tmp_path / "t.npy", rows.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(load_inputs(tmp_path / "t.npy").images.numpy(), rows.reshape(4, 3, 32, 32))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rows[i].reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / f"img{i}.png")
    inp = load_inputs(folder)
    assert inp.ids == ["img0.png", "img1.png", "img2.png"]
    assert np.array_equal(inp.images[1].numpy(), rows[1].reshape(3, 32, 32))


def test_other_sizes_are_resized_with_a_warning(tmp_path):
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "big.jpg")
    with pytest.warns(UserWarning, match="64x48 resized to 32x32"):
        inp = load_inputs(tmp_path / "big.jpg")
    assert inp.images.shape == (1, 3, 32, 32) and inp.images[0, 0].float().mean() > 150


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = dump(tmp_path / "evil.pkl", {b"data": Evil()})
    with pytest.raises(UserError, match="unsafe or unsupported pickle refused"):
        load_inputs(path)
    assert not marker.exists()


@pytest.mark.parametrize("obj, message", [
    ({b"data": np.zeros((4, 100), np.uint8)}, r"images have shape \(4, 100\)"),
    ({b"data": np.zeros((4, 3072), np.float32)}, "images have dtype float32, expected uint8"),
    ({b"data": np.zeros((0, 3072), np.uint8)}, "contains no images"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"ids": [1, 2, 3]}, "3 ids but 4 images"),
    ({b"pixels": np.zeros((4, 3072), np.uint8)}, "no b'data' key"),
    ([1, 2, 3], "expected a dict with b'data'"),
])
def test_bad_pickles(tmp_path, obj, message):
    with pytest.raises(UserError, match=message):
        load_inputs(dump(tmp_path / "bad.pkl", obj))


def test_unreadable_and_missing_inputs(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="unreadable image"):
        load_inputs(tmp_path / "broken.png")
    with pytest.raises(UserError, match="no such file"):
        load_inputs(tmp_path / "nothing.pkl")
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps({b"data": chw_rows()})[:50])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_inputs(tmp_path / "trunc.pkl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        load_inputs(tmp_path / "empty")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="holds pickled objects, which are refused"):
        load_inputs(tmp_path / "obj.npy")
