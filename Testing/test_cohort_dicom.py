"""DICOM trees in a batch (axial CT kept; localizers, MR and bad geometry explained) and the DICOM SEG round trip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from core_helpers import SAMPLE_CT, biased_checkpoint
from liver_e2net import cli
from liver_e2net.checkpoint import save_checkpoint
from liver_e2net.cohort.dicom_tree import group_series
from liver_e2net.cohort.discovery import Case
from liver_e2net.cohort.runner import read_case
from liver_e2net.cohort.table import read_table
from liver_e2net.dicom_seg import write_dicom_seg
from test_cohort_helpers import write_ct_series

hd = pytest.importorskip("highdicom")

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
CODES = {  # segment label -> (category, type, anatomic region) SNOMED CT codes
    "Liver": ("123037004", "10200004", None),
    "Liver tumor": ("49755003", "108369006", "10200004"),
}


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    """16 slices of the 3 mm TotalSegmentator CT, whose direction matrix is flipped (a geometry test of its own)."""
    return sitk.ReadImage(str(SAMPLE_CT))[:, :, 20:36]


@pytest.fixture(scope="module")
def axial_series(tmp_path_factory, ct) -> list[Path]:
    return write_ct_series(ct, tmp_path_factory.mktemp("dicom") / "axial")


def test_tree_keeps_axial_ct_and_says_why_it_skips_the_rest(tmp_path, ct) -> None:
    tiny = ct[:16, :16, :6]
    write_ct_series(tiny, tmp_path / "axial", series_number=2)
    write_ct_series(
        tiny[:, :, :1], tmp_path / "scout", series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    write_ct_series(tiny, tmp_path / "mr", series_number=4, modality="MR")
    coronal = sitk.Image(tiny)
    coronal.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))
    write_ct_series(coronal, tmp_path / "coronal", series_number=5)
    gap = write_ct_series(tiny, tmp_path / "gap", series_number=6)
    gap[2].unlink()  # a missing slice
    twice = write_ct_series(tiny, tmp_path / "twice", series_number=7)
    header = pydicom.dcmread(twice[0])
    header.SOPInstanceUID = pydicom.uid.generate_uid()
    header.save_as(tmp_path / "twice" / "copy.dcm")  # two images at one position
    (tmp_path / "cut.dcm").write_bytes(twice[1].read_bytes()[:300])
    files = sorted(str(p) for p in tmp_path.rglob("*.dcm"))
    series, rejected = group_series(files)
    problems = {Path(s.folder).name: s.problem for s in series}
    assert problems["axial"] == ""
    assert "spacing varies" in problems["gap"] and "share a position" in problems["twice"]
    reasons = {Path(r.source.split(" (")[0]).name: r.reason for r in rejected}
    assert "localizer" in reasons["scout"] and "modality MR" in reasons["mr"]
    assert "coronal" in reasons["coronal"] and "incomplete DICOM" in reasons["cut.dcm"]
    axial = next(s for s in series if s.problem == "")
    positions = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in axial.files]
    assert positions == sorted(positions) and len(axial.files) == 6


def test_series_read_matches_the_volume_it_was_written_from(axial_series, ct) -> None:
    series, _ = group_series([str(p) for p in axial_series])
    image = read_case(Case(series[0].name, series[0].folder, series[0].files, series[0].uid))
    assert image.GetSize() == ct.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), ct.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))


def test_dicom_seg_round_trip_frames_geometry_and_codes(tmp_path, axial_series, ct) -> None:
    label = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    label[3:12, 30:70, 20:80] = 1
    label[5:8, 40:50, 40:55] = 2
    files = [str(p) for p in group_series([str(p) for p in axial_series])[0][0].files]
    path = write_dicom_seg(label, files, tmp_path / "seg.dcm", "test-model abc123")
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in files)}
    order = [pydicom.dcmread(f).SOPInstanceUID for f in files]

    seg = hd.seg.segread(path)  # highdicom
    assert [d.segment_label for d in seg.SegmentSequence] == ["Liver", "Liver tumor"]
    for description in seg.SegmentSequence:
        category, kind, region = CODES[description.segment_label]
        assert description.segmented_property_category.value == category
        assert description.segmented_property_type.value == kind
        assert description.segmented_property_type.scheme_designator == "SCT"
        regions = [r.value for r in getattr(description, "anatomic_regions", [])]
        assert regions == ([region] if region else [])
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=order, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )
    assert np.array_equal(pixels[..., 0] > 0, label >= 1) and np.array_equal(pixels[..., 1] > 0, label == 2)

    ds = pydicom.dcmread(path)  # plain pydicom
    first = next(iter(sources.values()))
    assert ds.SOPClassUID == SEG_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert (
        ds.FrameOfReferenceUID == first.FrameOfReferenceUID and ds.StudyInstanceUID == first.StudyInstanceUID
    )
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    non_empty = sum(int(label[k].any()) + int((label[k] == 2).any()) for k in range(label.shape[0]))
    assert int(ds.NumberOfFrames) == non_empty and ds.pixel_array.shape == (
        non_empty,
        ct.GetHeight(),
        ct.GetWidth(),
    )
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing)
    assert np.allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient, first.ImageOrientationPatient
    )
    for frame, image in zip(ds.PerFrameFunctionalGroupsSequence, ds.pixel_array):
        source = sources[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert np.allclose(frame.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient)
        segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = order.index(source.SOPInstanceUID)
        assert np.array_equal(image > 0, label[k] >= 1 if segment == 1 else label[k] == 2)


def test_batch_writes_dicom_seg_for_dicom_input_and_refuses_it_for_nifti(
    tmp_path, axial_series, ct, monkeypatch, capsys
) -> None:
    model = save_checkpoint(biased_checkpoint(liver_bias=0.5, tumor_bias=-0.2), tmp_path / "m.pt")
    nifti = tmp_path / "volume.nii.gz"
    sitk.WriteImage(ct, str(nifti))
    out = tmp_path / "out"
    code = cli.main(
        [
            "segment-batch",
            str(axial_series[0].parent),
            str(nifti),
            "-o",
            str(out),
            "--model",
            str(model),
            "--format",
            "nifti",
            "dicom-seg",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--progress",
            "none",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = {row["case"]: row for row in read_table(out / "cohort.csv")}
    assert rows["volume"]["status"] == "failed" and "needs DICOM input" in rows["volume"]["message"]
    name = "LIVER001_3_Abdomen"
    assert rows[name]["status"] == "done" and rows[name]["series_uid"]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name / "label.nii.gz")))
    seg = hd.seg.segread(out / name / "seg.dcm")
    uids = [
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        for f in sorted(axial_series, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    ]
    numbers = [d.segment_number for d in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers)
    assert label.any() and np.array_equal(pixels[..., 0] > 0, label >= 1)
    record = json.loads((out / name / "case.json").read_text())
    assert (
        record["outputs"]["dicom-seg"]["path"] == "seg.dcm"
        and record["series_uid"] == rows[name]["series_uid"]
    )


def test_dcmqi_reads_the_seg_as_slicer_does(tmp_path, axial_series, ct) -> None:
    """dcmqi's segimage2itkimage is the reader of Slicer's QuantitativeReporting (pip install dcmqi; skips if absent)."""
    # A venv's scripts folder is not on PATH unless the venv is activated: look beside this interpreter too.
    program = shutil.which("segimage2itkimage") or shutil.which("segimage2itkimage", path=str(Path(sys.executable).parent))
    if program is None:
        pytest.skip("dcmqi's segimage2itkimage not on PATH (pip install dcmqi)")
    label = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    label[2:14, 25:75, 20:90] = 1
    label[6:9, 40:52, 40:60] = 2
    files = [str(p) for p in group_series([str(p) for p in axial_series])[0][0].files]
    seg = write_dicom_seg(label, files, tmp_path / "seg.dcm", "test-model abc123")
    done = subprocess.run(
        [program, "--inputDICOM", str(seg), "--outputDirectory", str(tmp_path), "--outputType", "nifti"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    segments = [group[0] for group in meta["segmentAttributes"]]
    assert [s["SegmentLabel"] for s in segments] == ["Liver", "Liver tumor"]
    assert [s["SegmentedPropertyTypeCodeSequence"]["CodeValue"] for s in segments] == [
        "10200004",
        "108369006",
    ]
    reference = sitk.GetImageFromArray(label)
    reference.CopyInformation(ct)
    for number, expected in ((1, label >= 1), (2, label == 2)):
        image = sitk.ReadImage(str(tmp_path / f"{number}.nii.gz"))
        on_grid = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(on_grid) > 0, expected)
