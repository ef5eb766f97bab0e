"""Reading label files for training: plain label maps {0, 1, 2} and Slicer .seg.nrrd segmentations.

A .seg.nrrd names its segments (header keys SegmentN_Name / SegmentN_LabelValue / SegmentN_Layer); the
liver and tumor segments are recognised by name, so a user's "Liver" + "Tumor_1" + "Portal vein" works as is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import UserInputError
from ..io import read_image
from ..protocol import segment_role

log = logging.getLogger("liver_e2net.training")


def read_label(path: Path, ct: sitk.Image) -> np.ndarray:
    """The label of `ct` as a [z, y, x] uint8 array {0, 1, 2} on the CT's grid, checked."""
    image = read_image(path)
    if image.HasMetaDataKey("Segment0_Name"):
        label, image = _segmentation_label(image, path), _single_layer_geometry(image)
        label = _onto_ct_grid(label, image, ct, path)
    else:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise UserInputError(
                f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a label "
                "map (one value per voxel) or a .seg.nrrd segmentation is needed"
            )
        mismatch = geometry_mismatch(image, ct)
        if mismatch:
            raise UserInputError(
                f"{path} does not lie on its CT's grid ({mismatch}): pair each CT with its own label"
            )
        label = check_label_values(sitk.GetArrayFromImage(image), str(path))
    check_has_liver(label, str(path))
    return label


def check_label_values(array: np.ndarray, name: str) -> np.ndarray:
    """Refuses anything but {0, 1, 2} (a 0/255 mask or a multi-organ map would train the wrong thing)."""
    bad = (array < 0) | (array > 2)
    if np.issubdtype(array.dtype, np.floating):
        bad |= array != np.round(array)
    if bad.any():
        values = np.unique(array[bad])[:8]
        raise UserInputError(
            f"{name} has label values {', '.join(f'{v:g}' for v in values)} outside "
            "{0 background, 1 liver, 2 tumor}; convert it (or save a .seg.nrrd with named segments)"
        )
    return array.astype(np.uint8)


def check_has_liver(label: np.ndarray, name: str) -> None:
    if not (label >= 1).any():
        raise UserInputError(f"{name} has no liver (no voxel labelled 1 or 2): every training case needs one")
    if not (label == 1).any():  # a liver mask saved as 2, or tumors drawn alone: the liver would be all tumor
        raise UserInputError(
            f"{name} has only tumor voxels (value 2), no liver (value 1): label the liver too (tumors lie inside it)"
        )


def geometry_mismatch(a: sitk.Image, b: sitk.Image) -> str | None:
    """None when both images share size, spacing, origin and direction (to well below a voxel)."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    tolerance = 1e-3 * min(b.GetSpacing())
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance):
        return f"spacing {a.GetSpacing()} vs {b.GetSpacing()}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=max(tolerance, 1e-3)):
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-4):
        return f"direction {a.GetDirection()} vs {b.GetDirection()}"
    return None


def _segmentation_label(image: sitk.Image, path: Path) -> np.ndarray:
    """Union of the liver-named segments -> 1, of the tumor-named ones -> 2 (tumor counts as liver)."""
    array = sitk.GetArrayFromImage(image)  # [z, y, x] or [z, y, x, layer]
    masks = {"liver": np.zeros(array.shape[:3], bool), "tumor": np.zeros(array.shape[:3], bool)}
    used, ignored, roles = [], [], set()
    index = 0
    while image.HasMetaDataKey(f"Segment{index}_Name"):
        name = image.GetMetaData(f"Segment{index}_Name")
        value = int(_metadata(image, f"Segment{index}_LabelValue", "1"))
        layer = int(_metadata(image, f"Segment{index}_Layer", "0"))
        role = segment_role(name)
        if role is None:
            ignored.append(name)
        else:
            values = array[..., layer] if array.ndim == 4 else array
            masks[role] |= values == value
            roles.add(role)
            used.append(f"{name!r} (value {value}, layer {layer}) -> {role}")
        index += 1
    log.info(
        "%s: %s%s",
        path.name,
        "; ".join(used) or "no liver or tumor segment",
        f"; ignored {', '.join(repr(n) for n in ignored)}" if ignored else "",
    )
    if "liver" not in roles:
        names = ", ".join(repr(image.GetMetaData(f"Segment{i}_Name")) for i in range(index))
        raise UserInputError(
            f"{path}: no segment named like the liver among {names}; name the liver segment "
            "'Liver' (and tumors 'Liver tumor', 'Tumor', 'Lesion', ...)"
        )
    return np.where(masks["tumor"], 2, np.where(masks["liver"], 1, 0)).astype(np.uint8)


def _metadata(image: sitk.Image, key: str, default: str) -> str:
    return image.GetMetaData(key) if image.HasMetaDataKey(key) else default


def _single_layer_geometry(image: sitk.Image) -> sitk.Image:
    """A scalar image with the segmentation's grid (multi-layer .seg.nrrd files are vector images)."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return image
    return sitk.VectorIndexSelectionCast(image, 0)


def _onto_ct_grid(label: np.ndarray, image: sitk.Image, ct: sitk.Image, path: Path) -> np.ndarray:
    """Slicer may save a segmentation cropped to its extent; paste it into the CT grid when the voxels align."""
    if geometry_mismatch(image, ct) is None:
        return label
    same_lattice = np.allclose(image.GetSpacing(), ct.GetSpacing(), rtol=1e-4) and np.allclose(
        image.GetDirection(), ct.GetDirection(), atol=1e-4
    )
    offset = np.asarray(ct.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))  # (x, y, z)
    start = np.round(offset).astype(int)
    stop = start + np.asarray(image.GetSize())
    if (
        not same_lattice
        or not np.allclose(offset, start, atol=1e-2)
        or (start < 0).any()
        or (stop > ct.GetSize()).any()
    ):
        raise UserInputError(
            f"{path} does not lie on its CT's grid ({geometry_mismatch(image, ct)}) and is not a "
            "crop of it: pair each CT with its own segmentation"
        )
    full = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    full[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]] = label
    return full
