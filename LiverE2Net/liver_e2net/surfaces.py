"""Closed, lightly smoothed STL surfaces of label-map segments in LPS millimetres (marching cubes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.measure import marching_cubes

from .io import atomic_output
from .postprocessing import mask_bounds, remove_small_components
from .segments import SEGMENTS


def surface_mesh(
    mask: np.ndarray, reference: sitk.Image, smoothing_mm: float = 1.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Mask [z, y, x] -> (vertices (N, 3) in LPS mm, faces (M, 3)), outward normals, watertight; None if empty.

    Islands under 10 voxels are dropped first: single-voxel specks make smoothed surfaces non-manifold.
    The mask is padded by empty voxels so every surface closes, and smoothed with a Gaussian of
    `smoothing_mm` before the 0.5 iso-surface is taken.
    """
    # Labelling the components of the whole volume took 2.5 GB on a 512x512x800 CT; its box is enough.
    bounds = mask_bounds(mask)
    if bounds is None:
        return None
    mask = remove_small_components(mask[bounds], 10)
    if not mask.any():
        return None
    spacing = np.asarray(reference.GetSpacing())  # (x, y, z)
    zyx = np.argwhere(mask)
    low, high = zyx.min(0), zyx.max(0) + 1
    pad = 3 + int(np.ceil(2 * smoothing_mm / spacing.min()))
    crop = np.pad(mask[tuple(slice(a, b) for a, b in zip(low, high))].astype(np.float32), pad)
    low = low + [b.start for b in bounds]
    if smoothing_mm > 0:
        crop = ndimage.gaussian_filter(crop, sigma=smoothing_mm / spacing[::-1])
    vertices_zyx, faces, _, _ = marching_cubes(crop, level=0.5)
    ijk = (vertices_zyx + low - pad)[:, ::-1]  # voxel index (i, j, k) = (x, y, z)
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    vertices = ijk * spacing @ direction.T + np.asarray(reference.GetOrigin())
    if np.linalg.det(direction) < 0:
        # A left-handed direction matrix mirrors the mesh, which turns its faces inside out.
        faces = faces[:, ::-1]
    return vertices, faces


def write_stl(path: str | Path, vertices: np.ndarray, faces: np.ndarray, name: str = "surface") -> Path:
    """Binary STL, written atomically."""
    triangles = vertices[faces].astype(np.float32)  # (M, 3, 3)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    record = np.zeros(
        len(faces), dtype=[("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")]
    )
    record["normal"], record["vertices"] = normals, triangles
    header = f"Liver E2Net {name} (LPS, mm)".encode()[:80].ljust(80, b" ")
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(header)
            stream.write(np.uint32(len(faces)).tobytes())
            stream.write(record.tobytes())
    return Path(path)


def segment_meshes(
    label: np.ndarray, reference: sitk.Image, smoothing_mm: float = 1.0
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(file name, segment name, vertices, faces) of each non-empty segment, for writers that stage files."""
    for segment in SEGMENTS:
        mask = label >= segment.label if segment.label == 1 else label == segment.label
        mesh = surface_mesh(mask, reference, smoothing_mm)
        if mesh is not None:
            yield f"{segment.name.replace(' ', '_')}_LPS.stl", segment.name, *mesh
