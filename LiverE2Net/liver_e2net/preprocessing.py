"""Geometry and intensity steps shared by inference and training, each recorded so it can be undone exactly.

The network frame: the array reoriented so that [z, y, x] runs inferior->superior, anterior->posterior,
right->left (LPS, radiological display), so every axial slice looks the way the network was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .config import CONTEXT_SLICES
from .errors import UserInputError
from .io import Volume

NETWORK_ORIENTATION = "LPS"


@dataclass(frozen=True)
class OrientationRecord:
    """What `to_network_frame` did: enough to put an array on the network frame back on the input grid."""

    source_orientation: str  # e.g. "RAS", "LPS", "LSA"...
    reference: sitk.Image  # the input image (geometry only is used)


def to_network_frame(image: sitk.Image) -> tuple[Volume, OrientationRecord]:
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    oriented = sitk.DICOMOrient(image, NETWORK_ORIENTATION) if orientation != NETWORK_ORIENTATION else image
    return Volume.from_image(oriented), OrientationRecord(orientation, image)


def from_network_frame(array: np.ndarray, volume: Volume, record: OrientationRecord) -> np.ndarray:
    """An array on the network frame (same shape as volume.array) -> the same array on the input's grid."""
    if record.source_orientation == NETWORK_ORIENTATION:
        return array
    restored = sitk.DICOMOrient(volume.to_image(array), record.source_orientation)
    result = sitk.GetArrayFromImage(restored)
    assert (
        result.shape == sitk.GetArrayViewFromImage(record.reference).shape
    )  # a permutation/flip cannot fail this
    return result


def box_on_input_grid(
    array: np.ndarray, box: Box, volume: Volume, record: OrientationRecord
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A [..., z, y, x] array of the network-frame box -> (the box's slices on the input grid, the array on that
    grid). The reorientation only permutes and flips axes, so a box stays a box: reorienting it alone keeps a
    box-sized array box-sized (a whole-volume map of a 512x512x800 CT is 0.84 GB per channel)."""
    if record.source_orientation == NETWORK_ORIENTATION:
        return box.slices, array
    geometry = volume.to_image(np.zeros((1, 1, 1), np.uint8))
    start = geometry.TransformIndexToPhysicalPoint((box.x0, box.y0, box.z0))
    channels = []
    for channel in array.reshape(-1, *array.shape[-3:]):
        image = sitk.GetImageFromArray(channel)
        image.SetSpacing(volume.spacing)
        image.SetDirection(volume.direction)
        image.SetOrigin(start)
        restored = sitk.DICOMOrient(image, record.source_orientation)
        channels.append(sitk.GetArrayFromImage(restored))
    corner = record.reference.TransformPhysicalPointToIndex(restored.GetOrigin())[::-1]
    slices = tuple(slice(c, c + n) for c, n in zip(corner, channels[0].shape))
    return slices, np.stack(channels).reshape(*array.shape[:-3], *channels[0].shape)


def normalize_hu(array: np.ndarray | torch.Tensor, window: tuple[float, float]):
    """HU window -> [-1, 1] float32 (works on numpy arrays and tensors)."""
    low, high = window
    scale, offset = 2.0 / (high - low), -1.0 - 2.0 * low / (high - low)
    if isinstance(array, torch.Tensor):
        return array.float().clamp(low, high) * scale + offset
    return np.clip(array, low, high).astype(np.float32) * np.float32(scale) + np.float32(offset)


def context_stack(volume_zyx: np.ndarray, indices, context_slices: int) -> np.ndarray:
    """[z, y, x] volume -> (len(indices), context_slices, y, x): for each index z, slices z-k .. z+k in that
    order (k = context_slices // 2), the index's own slice in the middle; past either end of the volume the end
    slice repeats. Context 1 is the slice itself as one channel.

    Why one function: inference, training samples and validation must build exactly the same input. Only the
    needed slices are read, so it is cheap on memory-mapped volumes and on views of a crop.
    """
    if context_slices not in CONTEXT_SLICES:
        raise UserInputError(
            f"context_slices {context_slices!r}: use one of {', '.join(map(str, CONTEXT_SLICES))}"
        )
    indices = np.asarray(indices, dtype=np.intp).reshape(-1)
    depth = volume_zyx.shape[0]
    if indices.size and (indices.min() < 0 or indices.max() >= depth):
        raise IndexError(f"slice indices {indices.min()}..{indices.max()} outside a volume of {depth} slices")
    half = context_slices // 2
    neighbours = np.clip(indices[:, None] + np.arange(-half, half + 1), 0, depth - 1)  # (B, C)
    return np.ascontiguousarray(volume_zyx[neighbours])


def resize(batch: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size); antialiased when shrinking so thin structures are not aliased away."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    if mode == "nearest":
        return F.interpolate(batch, size=size, mode="nearest")
    shrinking = size[0] < batch.shape[-2] or size[1] < batch.shape[-1]
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def stage1_size(
    shape_yx: tuple[int, int], spacing_yx: tuple[float, float], pixel_mm: float, multiple: int = 32
) -> tuple[int, int]:
    """Slice size at the model's stage-1 pixel size, rounded up to the network stride."""
    return tuple(
        max(multiple, int(np.ceil(n * s / pixel_mm / multiple)) * multiple)
        for n, s in zip(shape_yx, spacing_yx)
    )


def stage1_grid(shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float], voxel_mm: float
                ) -> tuple[int, int, int]:  # fmt: skip
    """A [z, y, x] volume's shape on a 3D stage 1's grid of `voxel_mm` voxels (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / voxel_mm))) for n, s in zip(shape_zyx, spacing_xyz[::-1]))


def downsample_volume(volume_zyx: np.ndarray, grid: tuple[int, int, int], chunk: int = 32) -> torch.Tensor:
    """[z, y, x] array -> float32 (D, H, W) tensor of `grid`, each output voxel the mean of the input voxels it
    covers (area interpolation: no aliasing of thin structures). In-plane per chunk of slices, then along z, so
    no float copy of the whole CT is ever made; the box means are separable, so this equals 3D area pooling."""
    depth, height, width = grid
    planes = torch.empty((volume_zyx.shape[0], height, width), dtype=torch.float32)
    for start in range(0, volume_zyx.shape[0], chunk):
        block = torch.from_numpy(np.ascontiguousarray(volume_zyx[start : start + chunk], dtype=np.float32))
        planes[start : start + chunk] = F.interpolate(block[None], size=(height, width), mode="area")[0]
    along_z = planes.permute(1, 2, 0).reshape(1, height * width, -1)  # (1, H*W, Z): 1D area along z
    return F.interpolate(along_z, size=depth, mode="area")[0].reshape(height, width, depth).permute(2, 0, 1)


def pad_to_multiple(tensor: torch.Tensor, multiple: int, value: float) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """(..., D, H, W) -> padded at the far ends to multiples of `multiple`, and the slices of the original."""
    spatial = tensor.shape[-3:]
    pads = [(-n) % multiple for n in spatial]
    padded = F.pad(tensor, [p for pad in reversed(pads) for p in (0, pad)], value=value)
    return padded, tuple(slice(0, n) for n in spatial)


@dataclass(frozen=True)
class Box:
    """A liver box on the network frame: slices z0:z1, rows y0:y1, columns x0:x1 (half-open)."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1)


def bounding_box(mask: np.ndarray, margin_yx: tuple[int, int], margin_z: int) -> Box | None:
    """Box of the True voxels of a [z, y, x] mask plus margins, clipped to the volume; None if the mask is empty."""
    if not mask.any():
        return None
    ranges = []
    for axis, margin in zip(range(3), (margin_z, *margin_yx)):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        ranges.append((max(0, present[0] - margin), min(mask.shape[axis], present[-1] + 1 + margin)))
    (z0, z1), (y0, y1), (x0, x1) = ranges
    return Box(int(z0), int(z1), int(y0), int(y1), int(x0), int(x1))
