"""Batched augmentations do exactly what they claim, on tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet5m.data.augment import (
    AugContext,
    AugmentConfig,
    build_augment,
    color_jitter,
    cutout,
    flip,
    gaussian_blur,
    random_crop,
    resized_crop,
    rotation,
    translate,
    vflip,
)
from resnet5m.data.loader import BatchLoader


def ctx(seed=0, epoch=0, n=16):
    return AugContext(torch.Generator().manual_seed(seed), epoch, torch.arange(n), seed=0)


def batch(n=16, h=32):
    return torch.rand(n, 3, h, h)


def test_flip_with_p1_equals_manual_flip():
    x = batch()
    assert torch.equal(flip(x, ctx(), p=1.0), x.flip(-1))
    assert torch.equal(flip(x, ctx(), p=0.0), x)
    assert torch.equal(vflip(x, ctx(), p=1.0), x.flip(-2))


def test_random_flip_flips_about_half_and_only_whole_images():
    x = batch(1000, 8)
    y = flip(x, ctx(n=1000))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 400 < int(flipped.sum()) < 600


def test_alternating_flip_flips_each_image_on_alternate_epochs():
    x = batch(64, 8)
    idx = torch.arange(64)
    e0 = flip(x, AugContext(torch.Generator(), 0, idx), mode="alternating")
    e1 = flip(x, AugContext(torch.Generator(), 1, idx), mode="alternating")
    e2 = flip(x, AugContext(torch.Generator(), 2, idx), mode="alternating")
    assert torch.equal(e0, e2)  # same choice on every even epoch
    f0 = (e0 == x.flip(-1)).flatten(1).all(1)
    f1 = (e1 == x.flip(-1)).flatten(1).all(1)
    assert bool((f0 ^ f1).all())  # opposite choice on odd epochs
    assert 16 < int(f0.sum()) < 48  # the base choice is random per image
    # the choice is tied to the dataset index, not the position in the batch
    perm = torch.randperm(64)
    ep = flip(x[perm], AugContext(torch.Generator(), 0, idx[perm]), mode="alternating")
    assert torch.equal(ep, e0[perm])


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_crop_outputs_are_windows_of_the_padded_image(mode):
    x = batch(32)
    y = random_crop(x, ctx(n=32), padding=4, mode=mode)
    assert y.shape == x.shape
    xp = F.pad(x, (4,) * 4, mode="reflect" if mode == "reflect" else "constant")
    offsets = set()
    for i in range(32):
        match = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(y[i], xp[i, :, dy:dy + 32, dx:dx + 32])]
        assert match, f"image {i} is not a crop of its padded source"
        offsets.add(match[0])
    assert len(offsets) > 5  # offsets vary


def test_crop_to_smaller_size_and_no_padding_stays_in_bounds():
    x = batch(8)
    y = random_crop(x, ctx(n=8), padding=0, size=24)
    assert y.shape == (8, 3, 24, 24)
    for i in range(8):
        assert any(torch.equal(y[i], x[i, :, a:a + 24, b:b + 24]) for a in range(9) for b in range(9))


def test_zero_padding_brings_in_black_borders():
    x = torch.ones(200, 3, 32, 32)
    y = random_crop(x, ctx(n=200), padding=4, mode="zero")
    assert y.min() == 0.0 and y.max() == 1.0


def test_translate_shifts_by_whole_pixels():
    x = batch(8)
    y = translate(x, ctx(n=8), fraction=0.125)
    for i in range(8):
        found = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                shifted = torch.roll(x[i], (dy, dx), (1, 2))
                inner = (slice(None), slice(4, 28), slice(4, 28))
                if torch.allclose(y[i][inner], shifted[inner], atol=1e-5):
                    found = True
        assert found


def test_rotation_by_zero_degrees_is_identity_and_nonzero_changes():
    x = batch(4)
    assert torch.allclose(rotation(x, ctx(n=4), degrees=0.0), x, atol=1e-5)
    y = rotation(x, ctx(n=4), degrees=30.0)
    assert not torch.allclose(y, x, atol=1e-2)
    # rotating a constant image leaves the centre untouched
    c = torch.full((4, 3, 32, 32), 0.5)
    assert torch.allclose(rotation(c, ctx(n=4), degrees=45)[:, :, 12:20, 12:20], c[:, :, 12:20, 12:20], atol=1e-5)


def test_resized_crop_full_scale_is_identity():
    x = batch(4)
    y = resized_crop(x, ctx(n=4), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(y, x, atol=1e-5)
    z = resized_crop(x, ctx(n=4), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert z.shape == x.shape and not torch.allclose(z, x, atol=1e-2)


def test_color_jitter_brightness_scales_and_stays_in_range():
    x = torch.full((64, 3, 8, 8), 0.5)
    y = color_jitter(x, ctx(n=64), brightness=0.4, contrast=0, saturation=0, hue=0)
    factors = y[:, 0, 0, 0] / 0.5
    assert torch.allclose(y, x * factors.view(-1, 1, 1, 1))
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6 and factors.std() > 0.05
    z = color_jitter(torch.rand(32, 3, 8, 8), ctx(n=32), 0.8, 0.8, 0.8, 0.3)
    assert z.min() >= 0 and z.max() <= 1


def test_saturation_zero_gives_gray_and_hue_keeps_gray():
    x = torch.rand(8, 3, 8, 8)
    g = color_jitter(x, ctx(n=8), brightness=0, contrast=0, saturation=1.0, hue=0)
    assert g.shape == x.shape
    gray = torch.rand(8, 1, 8, 8).expand(8, 3, 8, 8)
    h = color_jitter(gray, ctx(n=8), brightness=0, contrast=0, saturation=0, hue=0.5)
    assert torch.allclose(h, gray, atol=1e-4)  # hue rotation leaves gray pixels gray


def test_blur_preserves_constant_images_and_smooths_noise():
    c = torch.full((4, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(c, ctx(n=4), p=1.0), c, atol=1e-6)
    x = torch.rand(4, 3, 16, 16)
    y = gaussian_blur(x, ctx(n=4), sigma=(1.5, 2.0), p=1.0)
    assert y.std() < x.std() * 0.8


def test_cutout_fills_one_square_with_the_mean():
    x = torch.ones(50, 3, 32, 32)
    y = cutout(x, ctx(n=50), size=8, fill=(0.0, 0.0, 0.0))
    holes = (y == 0).all(1)  # (N, H, W)
    areas = holes.flatten(1).sum(1)
    assert int(areas.max()) == 64 and int(areas.min()) >= 16  # clipped at borders
    for i in range(50):
        rows, cols = holes[i].any(1).nonzero(), holes[i].any(0).nonzero()
        assert int(holes[i].sum()) == len(rows) * len(cols)  # a rectangle


def test_pipeline_respects_config_and_is_seeded():
    cfg = AugmentConfig(crop={"padding": 4}, flip={}, color_jitter={"brightness": 0.3}, cutout={"size": 8})
    aug = build_augment(cfg)
    x = batch(8)
    a = aug(x, ctx(seed=5, n=8))
    b = aug(x, ctx(seed=5, n=8))
    c = aug(x, ctx(seed=6, n=8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert build_augment(AugmentConfig(crop=None, flip=None)) is None


def test_loader_replays_any_batch_exactly():
    imgs = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(100) % 10
    aug = build_augment(AugmentConfig())
    loader = BatchLoader(imgs, labels, 16, augment=aug, seed=1)
    full = list(loader.epoch(3))
    tail = list(loader.epoch(3, start=4))
    assert len(full) == 6 and len(tail) == 2
    for a, b in zip(full[4:], tail):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    seen = torch.cat([b.indices for b in full])
    assert len(set(seen.tolist())) == 96  # no duplicates within an epoch (drop_last)
    assert not torch.equal(full[0].indices, next(iter(loader.epoch(4))).indices)
    assert full[0].images.is_contiguous(memory_format=torch.channels_last)
