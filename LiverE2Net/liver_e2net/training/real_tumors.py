"""Copies of the training cases' real tumors, to be painted into other livers (after TumorCP, Yang et al.,
MICCAI 2021, which pasted real tumors into other kidneys).

Why: a painted tumor is a shape with a texture we chose; a real metastasis has the irregular outline, the faint,
graded margin and the inner structure that a held-out tumor shows. Each copy is the tumor's HU relative to its
own liver, so the synthetic painter can set it on another liver's median as it does its own contrasts; the
painter scales it to a drawn size, turns and mirrors it, and scales its contrast (synthetic_tumors.py).

Conventions as in synthetic_tumors.py: arrays [z, y, x], spacing (x, y, z) in mm, labels 0/1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

LIVER, TUMOR = 1, 2
MIN_DONOR_ML = 1.0  # smaller tumors carry too few voxels to show a texture worth copying
_LIVER_RING_MM = 15.0  # the donor's liver median is taken this close to the tumor
_FIELD_SMOOTH_MM = 1.0  # the donor's CT noise is smoothed away; the host keeps its own


@dataclass(frozen=True)
class DonorTumor:
    """One real tumor: its mask in a tight crop and its HU minus the median of the liver around it."""

    source: str
    mask: np.ndarray  # bool [z, y, x]
    contrast_hu: np.ndarray  # float32 [z, y, x]; outside the mask, the nearest tumor voxel's value
    spacing_zyx: tuple[float, float, float]

    @property
    def diameter_mm(self) -> float:
        """Volume-equivalent diameter."""
        volume = float(self.mask.sum()) * float(np.prod(self.spacing_zyx))
        return float(np.cbrt(6.0 * volume / np.pi))


def donors_from_case(
    ct: np.ndarray, label: np.ndarray, spacing: tuple[float, float, float], source: str,
    min_ml: float = MIN_DONOR_ML,
) -> list[DonorTumor]:  # fmt: skip
    """Every tumor (label 2, 3D face-connected) of at least `min_ml` with liver beside it, as a DonorTumor."""
    spacing_zyx = np.asarray(spacing, dtype=float)[::-1]
    components, _ = ndimage.label(label == TUMOR)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    donors = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None or np.count_nonzero(components[box] == index) * voxel_ml < min_ml:
            continue
        ring = np.ceil(_LIVER_RING_MM / spacing_zyx).astype(int)
        wide = tuple(
            slice(max(0, s.start - r), min(n, s.stop + r)) for s, r, n in zip(box, ring, label.shape, strict=True)
        )
        mask_wide = components[wide] == index
        near = ndimage.distance_transform_edt(~mask_wide, sampling=spacing_zyx) <= _LIVER_RING_MM
        liver_near = near & (label[wide] == LIVER)
        if not liver_near.any():
            continue  # a tumor with no liver around it has no contrast to copy
        hu = ct[wide].astype(np.float32)
        field = ndimage.gaussian_filter(hu, _FIELD_SMOOTH_MM / spacing_zyx, truncate=2.0) - np.median(hu[liver_near])
        # Outside the mask each voxel takes its nearest tumor voxel's value, so that resampling keeps the edge's own
        # contrast instead of mixing in the donor's surroundings.
        nearest = ndimage.distance_transform_edt(~mask_wide, return_distances=False, return_indices=True)
        field = field[tuple(nearest)]
        tight = tuple(
            slice(max(0, s.start - w.start - 1), min(n, s.stop - w.start + 1))
            for s, w, n in zip(box, wide, mask_wide.shape, strict=True)
        )
        donors.append(
            DonorTumor(source, mask_wide[tight].copy(), field[tight].astype(np.float32), tuple(spacing_zyx))
        )
    return donors


def transformed_donor(
    donor: DonorTumor, diameter_mm: float, spacing_zyx: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The donor scaled to `diameter_mm`, turned at random (mirrored half the time) and resampled onto a grid of
    `spacing_zyx`: (mask bool, contrast HU float32, index of its centre), in a box that holds any turn of it."""
    target_spacing = np.asarray(spacing_zyx, dtype=float)
    donor_spacing = np.asarray(donor.spacing_zyx, dtype=float)
    scale = diameter_mm / donor.diameter_mm
    turn = Rotation.from_quat(rng.standard_normal(4)).as_matrix()
    if rng.random() < 0.5:
        turn = turn @ np.diag([1.0, 1.0, -1.0])
    voxels = np.argwhere(donor.mask)
    centre = voxels.mean(axis=0)
    reach_mm = float(np.linalg.norm((voxels - centre) * donor_spacing, axis=1).max()) * scale + 2 * donor_spacing.max()
    origin = np.ceil(reach_mm / target_spacing).astype(int) + 1
    box = tuple(2 * origin + 1)
    # target index t -> donor index: centre + turn^T (t - origin) * target spacing / (scale * donor spacing)
    matrix = np.diag(1.0 / (scale * donor_spacing)) @ turn.T @ np.diag(target_spacing)
    offset = centre - matrix @ origin
    inside = ndimage.affine_transform(donor.mask.astype(np.float32), matrix, offset, output_shape=box, order=1) >= 0.5
    if not inside.any():  # smaller than a voxel: its centre voxel
        inside[tuple(origin)] = True
    contrast = ndimage.affine_transform(donor.contrast_hu, matrix, offset, output_shape=box, order=1, mode="nearest")
    return inside, contrast.astype(np.float32), origin
