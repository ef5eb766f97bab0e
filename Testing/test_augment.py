"""Acquisition augmentations (contrast phase, slice thickness, field of view, kernel sharpness) and shape ones
(per-axis zoom, smooth bends)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from liver_e2net.training.augment import (
    limit_field_of_view,
    random_affine,
    random_bend,
    sharpen,
    simulate_phase,
    thick_slice_stack,
    warp,
)
from liver_e2net.training.config import ACQUISITION_AUGMENTATION, SHAPE_AUGMENTATION, AugmentConfig


def liver_slab(seed=0):
    """(3, 64, 64) HU: fat, a 100 HU liver with 180 HU vessels and a 60 HU tumor, and its label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    liver = ((yy - 32) ** 2 + (xx - 32) ** 2 < 24**2)
    tumor = ((yy - 32) ** 2 + (xx - 40) ** 2 < 6**2)
    vessel = (np.abs(yy - 20) < 2) & liver & ~tumor
    hu = np.where(liver, 100.0, -100.0) + rng.normal(0, 5, (64, 64))
    hu[vessel], hu[tumor] = 180.0, 60.0
    label = liver.astype(np.uint8) + tumor
    return np.repeat(hu[None], 3, 0).astype(np.int16), np.repeat(label[None], 3, 0), vessel


@pytest.mark.parametrize(("phase", "low", "high"), [("arterial", 50, 75), ("delayed", 70, 100), ("unenhanced", 45, 65)])
def test_phase_moves_liver_vessels_and_tumor_to_the_phase(phase, low, high):
    hu, label, vessel = liver_slab()
    for seed in range(5):
        out = simulate_phase(hu, label, phase, np.random.default_rng(seed))
        parenchyma = np.median(out[:, 30:34, 10:20])  # deep in the liver, far from vessel and tumor
        assert low - 3 <= parenchyma <= high + 3, parenchyma
        assert abs(np.median(out[:, vessel]) - parenchyma) < 45  # from 80 HU: vessels lose most of their contrast
        tumor = np.median(out[:, 32, 39:42]) - parenchyma
        assert (tumor > 15 or tumor < -5) if phase == "arterial" else tumor < -4, tumor
        assert np.array_equal(out[label == 0], hu[label == 0].astype(np.float32)) or np.abs(
            out[:, :3, :3] - hu[:, :3, :3]).max() < 1e-3  # background far from the liver untouched


def test_portal_phase_and_liverless_slices_are_left_as_they_are():
    hu, label, _ = liver_slab()
    assert np.array_equal(simulate_phase(hu, label, "portal", np.random.default_rng(0)), hu.astype(np.float32))
    empty = np.zeros_like(label)
    assert np.array_equal(simulate_phase(hu, empty, "arterial", np.random.default_rng(0)), hu.astype(np.float32))


def test_thick_slices_average_the_native_slices_they_cover_and_space_neighbours_by_thickness():
    volume = np.arange(20, dtype=np.int16)[:, None, None] * np.ones((1, 2, 2), np.int16)  # slice z holds z
    stack = thick_slice_stack(volume, z=10, context_slices=3, spacing_z=1.0, thickness_mm=5.0)
    assert stack.shape == (3, 2, 2)
    assert stack[:, 0, 0].tolist() == [5.0, 10.0, 15.0]  # means of 3..7, 8..12, 13..17
    edge = thick_slice_stack(volume, z=0, context_slices=1, spacing_z=2.0, thickness_mm=1.0)
    assert edge[0, 0, 0] == 0.0  # thinner than the native slices: the slice itself


def test_field_of_view_pads_outside_a_circle_with_a_vendor_value():
    hu = np.full((1, 100, 100), 50.0, np.float32)
    out = limit_field_of_view(hu, np.random.default_rng(3))
    assert out[0, 50, 50] == 50.0
    assert set(np.unique(out)) - {50.0} <= {-1024.0, -2048.0, -3024.0} and out[0, 0, 0] != 50.0


def test_sharpen_raises_edge_contrast_and_keeps_flat_regions():
    image = torch.zeros(1, 32, 32)
    image[:, :, 16:] = 1.0
    out = sharpen(image, np.random.default_rng(0), AugmentConfig())
    assert out[0, 16, 16] > 1.0 and out[0, 16, 15] < 0.0  # overshoot either side of the edge
    assert torch.allclose(out[0, :, :5], image[0, :, :5]) and torch.allclose(out[0, :, -5:], image[0, :, -5:])


def test_new_runs_get_acquisition_augmentation_and_old_configs_keep_theirs():
    assert AugmentConfig().phase_probability == 0 and AugmentConfig().thick_slice_probability == 0
    assert ACQUISITION_AUGMENTATION.phase_probability > 0 and ACQUISITION_AUGMENTATION.fov_probability > 0


STILL = AugmentConfig(rotation_deg=0.0, scale=(1.0, 1.0), translate=0.0)  # only what a test switches on moves


def extents(mask: torch.Tensor) -> tuple[int, int]:
    """Rows and columns a (H, W) mask covers."""
    rows, cols = np.nonzero(mask.numpy() > 0.5)
    return int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1


def test_anisotropy_zooms_the_two_axes_apart_and_off_draws_what_it_drew_before():
    square = torch.zeros(1, 128, 128)
    square[0, 44:84, 44:84] = 1.0  # 40 x 40 pixels
    ratios = []
    for seed in range(6):
        theta = random_affine(np.random.default_rng(seed), dataclasses.replace(STILL, anisotropy=0.3), 128, 128)
        _, mask = warp(square - 1.0, square, theta)
        height, width = extents(mask[0])
        assert 40 * 0.65 <= height <= 40 * 1.35 and 40 * 0.65 <= width <= 40 * 1.35
        ratios.append(width / height)
    assert max(abs(r - 1) for r in ratios) > 0.05  # the axes do part
    rng, replay = np.random.default_rng(3), np.random.default_rng(3)
    random_affine(rng, AugmentConfig(), 64, 96)  # anisotropy 0: rotation, zoom and shift only, as older runs
    replay.uniform(size=4)
    assert rng.random() == replay.random()


def test_a_bend_is_smooth_bounded_and_moves_image_and_mask_together():
    config = dataclasses.replace(STILL, **SHAPE_AUGMENTATION)
    bend = random_bend(np.random.default_rng(0), config, 96, 128)
    assert bend.shape == (96, 128, 2)
    assert bend.abs().max() <= 2 * config.elastic_magnitude + 1e-6 and bend.abs().max() > 0.01
    assert (bend[1:] - bend[:-1]).abs().max() < 0.01 and (bend[:, 1:] - bend[:, :-1]).abs().max() < 0.01
    zero = random_bend(np.random.default_rng(0), dataclasses.replace(config, elastic_magnitude=0.0), 96, 128)
    assert zero.abs().max() == 0
    yy, xx = np.mgrid[:96, :128]
    disc = torch.from_numpy(((yy - 48) ** 2 + (xx - 64) ** 2 < 30**2).astype(np.float32))[None]
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    image, mask = warp(disc * 2 - 1, disc, identity, bend)
    assert not torch.equal(mask > 0.5, disc > 0.5)  # the disc changed shape
    assert torch.equal(image > 0, mask > 0.5)  # ... and the image's edge is the label's edge


def test_shape_augmentation_is_off_unless_asked():
    assert AugmentConfig().elastic_probability == 0 and AugmentConfig().anisotropy == 0
    assert ACQUISITION_AUGMENTATION.elastic_probability == 0
    assert SHAPE_AUGMENTATION["elastic_probability"] > 0 and SHAPE_AUGMENTATION["anisotropy"] > 0
