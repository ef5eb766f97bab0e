"""Bad inputs are refused before any work, with a message that names the file or value (issue 16, input side):
NaN/Inf voxels, unusable voxel sizes, pipes, damaged or incomplete DICOM series; a localizer inside a series and a
series without FrameOfReferenceUID are handled with a warning instead."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from core_helpers import REPO, SAMPLE_CT
from liver_e2net.cli import main
from liver_e2net.cohort.dicom_tree import group_series
from liver_e2net.dicom_seg import write_dicom_seg
from liver_e2net.errors import UserInputError
from liver_e2net.io import input_warnings, read_ct
from test_cohort_helpers import write_ct_series

NIFTI1_PIXDIM = 76  # byte offset of pixdim[0..7] (float32) in a NIfTI-1 header


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    """8 slices of the bundled 3 mm CT: real anatomy, small enough for a fast run."""
    return sitk.ReadImage(str(SAMPLE_CT))[:, :, 24:32]


def _segment(capsys, source: Path, out: Path, model: Path) -> tuple[int, str]:
    code = main(["segment", str(source), "-o", str(out), "--model", str(model), "--device", "cpu"])
    return code, capsys.readouterr().err


def _float_ct(ct: sitk.Image, path: Path, poison=None) -> Path:
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    if poison is not None:
        poison(array)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    sitk.WriteImage(image, str(path))
    return path


def _nan_block(array: np.ndarray) -> None:
    array[2:4, 10:20, 10:30] = np.nan


def _inf_voxel(array: np.ndarray) -> None:
    array[5, 0, 0] = np.inf


def _all_nan(array: np.ndarray) -> None:
    array[:] = np.nan


NONFINITE = {
    "nan.nii.gz": (_nan_block, "400 voxel(s)", "between z = 2 and z = 3"),
    "inf.nii": (_inf_voxel, "1 voxel(s)", "slice z = 5"),
    "nan.nrrd": (_nan_block, "400 voxel(s)", "between z = 2 and z = 3"),
    "nan.mha": (_nan_block, "400 voxel(s)", "between z = 2 and z = 3"),
    "allnan.nii.gz": (_all_nan, "8 slices", "between z = 0 and z = 7"),
}


@pytest.mark.parametrize("name", sorted(NONFINITE))
def test_nan_and_inf_voxels_are_refused_with_count_and_slices(tmp_path, capsys, model, ct, name) -> None:
    poison, count, where = NONFINITE[name]
    source = _float_ct(ct, tmp_path / name, poison)
    out = tmp_path / "label.nii.gz"
    code, err = _segment(capsys, source, out, model)
    assert code == 2 and str(source) in err and "not numbers (NaN or infinite)" in err
    assert count in err and where in err and "constant" not in err
    assert not out.exists()


def _nifti_with_pixdim(ct: sitk.Image, path: Path, axis: int, value: float) -> Path:
    sitk.WriteImage(ct, str(path))
    raw = bytearray(path.read_bytes())
    raw[NIFTI1_PIXDIM + 4 * axis : NIFTI1_PIXDIM + 4 * axis + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "axis, value, effect", [(1, 0.0, "1 mm"), (2, float("nan"), "1 mm"), (3, -3.0, "flip the image")]
)
def test_unusable_nifti_voxel_size_is_refused_before_itk_replaces_it(
    tmp_path, capsys, model, ct, axis, value, effect
) -> None:
    source = _nifti_with_pixdim(ct, tmp_path / "ct.nii", axis, value)
    out = tmp_path / "label.nii.gz"
    code, err = _segment(capsys, source, out, model)
    assert code == 2 and str(source) in err and "unusable voxel size" in err and effect in err
    assert not out.exists()


@pytest.mark.parametrize(
    "spacing, words", [((10.0, 10.0, 3.0), "in-plane pixel of 10 mm"), ((0.8, 0.8, 0.1), "a slice of 0.1 mm")]
)
def test_implausible_voxel_size_is_refused(tmp_path, capsys, model, ct, spacing, words) -> None:
    image = sitk.Image(ct)
    image.SetSpacing(spacing)
    source = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(source))
    out = tmp_path / "label.nii.gz"
    code, err = _segment(capsys, source, out, model)
    assert code == 2 and str(source) in err and words in err and "not a CT voxel size" in err
    assert not out.exists()


def test_a_named_pipe_is_refused_without_blocking(tmp_path, model) -> None:
    """Opening a FIFO waits for a writer that never comes: run in a child process with a timeout."""
    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "pipe")  # walked by segment-batch discovery, which sniffs files for DICOM
    command = [sys.executable, "-m", "liver_e2net", "segment", str(fifo), "-o", str(tmp_path / "o.nii.gz")]
    done = subprocess.run(
        [*command, "--model", str(model), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2 and f"{fifo} is not a regular file" in done.stderr
    sniff = "from liver_e2net.cohort.discovery import walk_folder; import sys; print(walk_folder(*sys.argv[1:2], '*', None))"
    done = subprocess.run(
        [sys.executable, "-c", sniff, str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def series(tmp_path, ct) -> list[Path]:
    return write_ct_series(ct, tmp_path / "series")


def test_a_cut_short_slice_file_is_refused_by_name(tmp_path, capsys, model, series) -> None:
    cut = series[3]
    cut.write_bytes(cut.read_bytes()[:-500])  # header intact, pixel data short: GDCM would drop the slice
    out = tmp_path / "label.nii.gz"
    code, err = _segment(capsys, series[0].parent, out, model)
    assert code == 2 and str(cut) in err and "500 bytes of its pixel data are missing" in err
    assert not out.exists()


def test_a_damaged_file_beside_a_series_stops_it_in_a_batch_too(series) -> None:
    series[5].write_bytes(series[5].read_bytes()[:400])  # cut inside the header
    found, rejected = group_series([str(p) for p in series])
    assert str(series[5]) in found[0].problem and "copy the series again" in found[0].problem
    assert [r.source for r in rejected] == [str(series[5])]


def test_a_file_that_is_not_dicom_is_left_out_and_named(series, ct, caplog) -> None:
    stray = series[0].parent / "notes.bin"
    stray.write_bytes(np.random.default_rng(0).bytes(4096))
    with caplog.at_level(logging.WARNING, logger="liver_e2net"):
        image = read_ct(series[0].parent)
    assert image.GetSize() == ct.GetSize()
    warnings = input_warnings(image)
    assert len(warnings) == 1 and "left out 1 file(s) that are not DICOM: notes.bin" in warnings[0]
    assert "notes.bin" in caplog.text


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path, capsys, model, series) -> None:
    series[4].unlink()
    out = tmp_path / "label.nii.gz"
    code, err = _segment(capsys, series[0].parent, out, model)
    assert code == 2 and "slice spacing varies" in err and "IM0003.dcm and IM0005.dcm" in err
    assert not out.exists()


def _add_to_series(image: sitk.Image, series: list[Path], name: str) -> Path:
    """One image written into the series of `series` (same study, series and frame of reference UIDs)."""
    template = pydicom.dcmread(series[0], stop_before_pixels=True)
    extra = pydicom.dcmread(write_ct_series(image, series[0].parent / "tmp", series_number=3)[0])
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        setattr(extra, key, getattr(template, key))
    path = series[0].parent / name
    extra.save_as(path)
    for leftover in (series[0].parent / "tmp").iterdir():
        leftover.unlink()
    (series[0].parent / "tmp").rmdir()
    return path


def _coronal(ct: sitk.Image) -> sitk.Image:
    coronal = sitk.Image(ct[:, :40, :1])
    coronal.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))
    return coronal


def test_a_localizer_inside_the_series_is_left_out_with_a_warning(series, ct, caplog) -> None:
    """GE stores the coronal localizer in the CT's own series; the axial stack is read, the localizer named."""
    localizer = _add_to_series(_coronal(ct), series, "IM9999.dcm")
    with caplog.at_level(logging.WARNING, logger="liver_e2net"):
        image = read_ct(series[0].parent)
    assert image.GetSize() == ct.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))
    (warning,) = input_warnings(image)
    assert "left out 1 image(s)" in warning and "1 coronal" in warning and localizer.name in warning
    assert localizer.name in caplog.text
    found, rejected = group_series([str(p) for p in series[0].parent.iterdir()])
    assert (
        found[0].problem == ""
        and len(found[0].files) == len(series)
        and found[0].notes == (warning.split(": ", 1)[1],)
    )


def test_a_series_without_an_axial_stack_is_refused(tmp_path, capsys, model, ct) -> None:
    coronal = write_ct_series(_coronal(ct), tmp_path / "series")
    _add_to_series(sitk.Image(ct[:, :, :1]), coronal, "IM0100.dcm")  # 1 axial + 1 coronal image
    out = tmp_path / "label.nii.gz"
    code, err = _segment(capsys, coronal[0].parent, out, model)
    assert code == 2 and str(coronal[0].parent) in err
    assert not out.exists()


def test_dicom_seg_for_a_series_without_frame_of_reference(tmp_path, series, ct, caplog) -> None:
    """Older exports (3D-IRCADb) have no FrameOfReferenceUID: the SEG gets a new one and the user is told."""
    for path in series:
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)
    image = read_ct(series[0].parent)
    label = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    label[2:6, 30:60, 30:70] = 1
    files = group_series([str(p) for p in series])[0][0].files
    with caplog.at_level(logging.WARNING, logger="liver_e2net"):
        path = write_dicom_seg(label, files, tmp_path / "seg.dcm", "test-model")
    seg = pydicom.dcmread(path)
    assert pydicom.uid.UID(seg.FrameOfReferenceUID).is_valid and "no FrameOfReferenceUID" in caplog.text
    assert int(seg.NumberOfFrames) == 4


def test_refusals_are_user_input_errors_for_callers_other_than_the_cli(tmp_path, ct) -> None:
    """Slicer and the batch call read_ct directly: they get the same UserInputError as the CLI."""
    source = _float_ct(ct, tmp_path / "nan.nii.gz", _nan_block)
    with pytest.raises(UserInputError, match="NaN"):
        read_ct(source)
