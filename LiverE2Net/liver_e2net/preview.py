"""A review figure of one segmented CT: axial and coronal slices with the liver and tumor outlines, and a 3D
surface view, drawn offscreen with matplotlib (no display, no VTK).

Why: a radiologist judges a segmentation by looking at it on the CT; a PNG per case lets a cohort be reviewed
at a glance and shows in the README what the tool produces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage import measure

from .extras import require
from .postprocessing import mask_bounds
from .preprocessing import to_network_frame

WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window for display
COLOURS = {1: "#d9a066", 2: "#39b54a"}  # liver (Slicer's liver colour family), tumor
SURFACE_MM = 3.0  # the 3D view is drawn from a label resampled to this voxel size: a light figure


def draw_preview(ct: sitk.Image, label: np.ndarray, path: str | Path, title: str = "") -> None:
    """PNG of `ct` (any orientation) with `label` ([z, y, x] on the CT's grid, 0/1/2) outlined."""
    require("matplotlib", "the preview figure").use("Agg")
    import matplotlib.pyplot as plt

    volume, _ = to_network_frame(ct)
    label_image = sitk.GetImageFromArray(label.astype(np.uint8))
    label_image.CopyInformation(ct)
    labels, _ = to_network_frame(label_image)
    hu, lab = volume.array, labels.array  # LPS: z inferior->superior, y anterior->posterior, x right->left
    sx, sy, sz = volume.spacing
    z, y = _centre_slices(lab)
    figure = plt.figure(figsize=(12, 4.4), dpi=110)
    axial = figure.add_subplot(1, 3, 1)
    _slice(axial, hu[z], lab[z], aspect=sy / sx, name=f"axial, slice {z + 1} of {hu.shape[0]}")
    coronal = figure.add_subplot(1, 3, 2)
    _slice(coronal, hu[::-1, y, :], lab[::-1, y, :], aspect=sz / sx, name="coronal")
    surface = figure.add_subplot(1, 3, 3, projection="3d")
    _surfaces(surface, lab, (sz, sy, sx))
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def _centre_slices(label: np.ndarray) -> tuple[int, int]:
    """The axial and coronal slices through the largest tumor if there is one, else the liver's centre."""
    tumors = label == 2
    target = tumors if tumors.any() else label >= 1
    bounds = mask_bounds(target)  # the work in the box: labelling a 512x512x800 volume took 1.7 GB
    if bounds is None:
        return label.shape[0] // 2, label.shape[1] // 2
    target = target[bounds]
    if tumors.any():
        components = measure.label(target, connectivity=3)
        sizes = np.bincount(components.ravel())[1:]
        target = components == 1 + int(np.argmax(sizes))
    zz, yy, _ = np.nonzero(target)
    return int(np.median(zz)) + bounds[0].start, int(np.median(yy)) + bounds[1].start


def _slice(axes, hu: np.ndarray, label: np.ndarray, aspect: float, name: str) -> None:
    axes.imshow(np.clip(hu, *WINDOW), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect,
                interpolation="bilinear")
    for value, colour in COLOURS.items():
        mask = label >= value if value == 1 else label == value
        if mask.any():
            axes.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
    axes.set_title(name, fontsize=9)
    axes.set_axis_off()


def _surfaces(axes, label: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """Marching-cubes surfaces of liver (translucent) and tumors, on a coarse grid, anterior view."""
    step = [max(1, int(round(SURFACE_MM / s))) for s in spacing_zyx]
    coarse = label[:: step[0], :: step[1], :: step[2]]
    spacing = tuple(s * k for s, k in zip(spacing_zyx, step))
    for value, colour, alpha in ((1, COLOURS[1], 0.25), (2, COLOURS[2], 0.9)):
        mask = coarse >= value if value == 1 else coarse == value
        if mask.sum() < 8:
            continue
        verts, faces, _, _ = measure.marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=spacing)
        # LPS array axes (z, y, x) -> plot x = patient left, y = posterior, z = superior.
        axes.plot_trisurf(verts[:, 2], verts[:, 1], faces, verts[:, 0], color=colour, alpha=alpha,
                          linewidth=0, shade=True)
    axes.view_init(elev=10, azim=-90)
    axes.set_box_aspect(None)
    axes.set_axis_off()
    axes.set_title("3D (anterior view)", fontsize=9)
