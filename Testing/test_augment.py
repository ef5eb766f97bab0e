"""Acquisition augmentations: contrast phase, slice thickness, field of view, kernel sharpness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from liver_e2net.training.augment import limit_field_of_view, sharpen, simulate_phase, thick_slice_stack
from liver_e2net.training.config import ACQUISITION_AUGMENTATION, AugmentConfig


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
