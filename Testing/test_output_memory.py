"""Issue 16: the whole-volume outputs of a tall CT stay within memory, with the same files and arrays as before.

The measured table (512x512x800, every `segment` option) is benchmarks/memory_800.py -> benchmarks/memory_800.md;
these tests check on small volumes that the memory-saving paths give the old results exactly.
"""

from __future__ import annotations

import gzip
import resource

import numpy as np
import pytest
import SimpleITK as sitk
from liver_e2net.outputs import probability_image, write_probability_nifti
from liver_e2net.pipeline import SegmentationResult
from liver_e2net.preprocessing import Box, box_on_input_grid, from_network_frame, to_network_frame
from liver_e2net.preview import _centre_slices
from liver_e2net.surfaces import surface_mesh


def _image(array: np.ndarray, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1), origin=(1.5, -2.25, 3.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.75, 0.8, 1.6))
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


def _probabilities(shape, box) -> SegmentationResult:
    """A [2, z, y, x] map that is random inside `box` and 0 outside, as the pipeline makes it."""
    probabilities = np.zeros((2, *shape), np.float32)
    inside = (slice(None), *box)
    probabilities[inside] = np.random.default_rng(0).random(probabilities[inside].shape, dtype=np.float32)
    return SegmentationResult(np.zeros(shape, np.uint8), probabilities, probability_box=box)


def _composed(result: SegmentationResult, reference: sitk.Image) -> sitk.Image:
    """The image the old code wrote: the channels composed whole."""
    image = sitk.Compose([sitk.GetImageFromArray(channel) for channel in result.probabilities])
    image.CopyInformation(reference)
    return image


@pytest.mark.parametrize(
    "direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 1, 0, -1, 0, 0, 0, 0, 1), (-1, 0, 0, 0, 0, 1, 0, -1, 0)]
)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_streamed_nifti_equals_itk_nifti(tmp_path, direction, suffix) -> None:
    """Same header and voxels as ITK's own NIfTI writer (gzip framing aside)."""
    shape, box = (9, 11, 13), (slice(2, 7), slice(1, 10), slice(3, 12))
    reference = _image(np.zeros(shape, np.int16), direction)
    result = _probabilities(shape, box)
    sitk.WriteImage(_composed(result, reference), str(tmp_path / f"itk{suffix}"), useCompression=True)
    write_probability_nifti(result.probabilities, reference, tmp_path / f"ours{suffix}")
    read = gzip.open if suffix.endswith(".gz") else open
    with read(tmp_path / f"itk{suffix}", "rb") as itk, read(tmp_path / f"ours{suffix}", "rb") as ours:
        assert ours.read() == itk.read()
    assert not list(tmp_path.glob("*.header.nii"))  # the scratch header file is gone


def test_probability_image_pastes_the_box_into_zeros() -> None:
    shape, box = (6, 7, 8), (slice(1, 4), slice(2, 7), slice(0, 5))
    reference = _image(np.zeros(shape, np.int16))
    result = _probabilities(shape, box)
    expected = sitk.GetArrayFromImage(_composed(result, reference))
    image = probability_image(result, reference)
    assert np.array_equal(sitk.GetArrayFromImage(image), expected)
    assert image.GetDirection() == reference.GetDirection() and image.GetOrigin() == reference.GetOrigin()


@pytest.mark.parametrize("axes,flips", [((0, 1, 2), (True, False, True)), ((2, 0, 1), (False, True, False))])
def test_box_on_input_grid_equals_reorienting_the_whole_volume(axes, flips) -> None:
    """A box map reoriented alone lands where the whole-volume reorientation puts it, with the same values."""
    ct = sitk.Flip(sitk.PermuteAxes(_image(np.zeros((10, 12, 14), np.int16), origin=(0, 0, 0)), axes), flips)
    volume, record = to_network_frame(ct)
    box = Box(2, 7, 3, 9, 1, 11)
    values = np.random.default_rng(1).random((2, 5, 6, 10), dtype=np.float32)
    whole = np.zeros((2, *volume.array.shape), np.float32)
    whole[(slice(None), *box.slices)] = values
    expected = np.stack([from_network_frame(channel, volume, record) for channel in whole])
    slices, inside = box_on_input_grid(values, box, volume, record)
    placed = np.zeros_like(expected)
    placed[(slice(None), *slices)] = inside
    assert np.array_equal(placed, expected)


def test_preview_centre_and_surfaces_do_the_box_work_in_the_box() -> None:
    """Cropping to the segment before labelling components changes nothing (same slices, same mesh)."""
    label = np.zeros((40, 50, 60), np.uint8)
    label[5:30, 10:40, 12:50] = 1
    label[8:12, 20:24, 20:26] = 2  # the larger tumor
    label[20:22, 30:32, 40:42] = 2
    assert _centre_slices(label) == (9, 21)
    reference = _image(label)
    vertices, faces = surface_mesh(label >= 1, reference, 1.0)
    spacing = np.asarray(reference.GetSpacing())
    corner = np.asarray(reference.GetOrigin()) + np.asarray(reference.GetDirection()).reshape(3, 3) @ (
        np.array([12, 10, 5]) * spacing
    )
    assert len(faces) > 100 and np.linalg.norm(vertices - corner, axis=1).min() < 3.0


def test_probability_nifti_is_streamed_without_a_copy_of_the_map(tmp_path) -> None:
    """Writing adds less than one channel to the peak; ITK's vector writer added two whole maps."""
    shape = (64, 512, 512)
    reference = sitk.Image(shape[::-1], sitk.sitkInt8)
    result = _probabilities(shape, (slice(0, 64), slice(0, 512), slice(0, 512)))  # all pages touched
    start = max(_rss(), _peak())
    write_probability_nifti(result.probabilities, reference, tmp_path / "p.nii.gz")
    assert _peak() - start < result.probabilities[0].nbytes


def _rss() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize()


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
