"""Input warnings reach the records (issue 16): what reading left out of the input and what writing had to make up
are listed in `segment --report` and in a batch case's case.json, besides the segmentation's own warnings.
Also: `segment-batch` picks its threads like `segment` (the cores not busy with other work)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from core_helpers import SAMPLE_CT
from liver_e2net.cli import main
from liver_e2net.cohort import sharding
from liver_e2net.cohort.sharding import Shard, rank_threads
from liver_e2net.io import with_input_warnings
from liver_e2net.outputs import report_fields
from liver_e2net.pipeline import SegmentationResult, TestTimeAugmentation
from test_cohort_helpers import write_ct_series
from test_input_faults import _add_to_series, _coronal


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE_CT))[:, :, 24:32]


def test_report_lists_input_warnings_then_segmentation_warnings_once(ct) -> None:
    image = with_input_warnings(sitk.Image(ct), ["left out 1 localizer image(s)", "no liver"])
    result = SegmentationResult(np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8), None)
    result.warnings = ["no liver", "flip TTA"]
    segmenter = SimpleNamespace(device="cpu", threads=1, precision="float32", tta=TestTimeAugmentation())
    report = report_fields("ct.nii.gz", segmenter, result, image, "none", model={"name": "m"})
    assert report["warnings"] == ["left out 1 localizer image(s)", "no liver", "flip TTA"]


def test_segment_report_records_a_file_left_out_of_the_dicom_folder(tmp_path, ct, model) -> None:
    series = write_ct_series(ct, tmp_path / "series")
    (series[0].parent / "notes.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    report = tmp_path / "report.json"
    arguments = ["segment", str(series[0].parent), "-o", str(tmp_path / "label.nii.gz"), "--report", str(report)]
    assert main([*arguments, "--model", str(model), "--device", "cpu", "--threads", "1"]) == 0
    warnings = json.loads(report.read_text())["warnings"]
    assert any("not DICOM: notes.bin" in warning for warning in warnings)


def test_batch_case_json_records_a_localizer_and_a_new_frame_of_reference(tmp_path, ct, model) -> None:
    series = write_ct_series(ct, tmp_path / "tree" / "series")
    _add_to_series(_coronal(ct), series, "IM9999.dcm")
    for path in series[0].parent.iterdir():  # an older export: no FrameOfReferenceUID
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)
    out = tmp_path / "out"
    arguments = ["segment-batch", str(tmp_path / "tree"), "-o", str(out), "--format", "nifti", "dicom-seg"]
    assert main([*arguments, "--model", str(model), "--device", "cpu", "--threads", "1"]) == 0
    (record_path,) = out.glob("*/case.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "done", record.get("error")
    warnings = record["warnings"]
    assert any("localizer" in w or "coronal" in w for w in warnings), warnings
    assert any("no FrameOfReferenceUID" in w for w in warnings), warnings
    assert (Path(record_path.parent) / "seg.dcm").exists()


def test_batch_threads_default_to_the_free_cores_like_segment(monkeypatch) -> None:
    monkeypatch.setattr(sharding, "default_threads", lambda: 3)
    assert rank_threads(None, Shard()) == 3
    assert rank_threads(None, Shard(0, 2, 0, 2)) == 1  # two processes share the 3 free cores
    assert rank_threads(None, Shard(0, 4, 0, 4)) == 1
    assert rank_threads(5, Shard(0, 2, 0, 2)) == 5  # --threads wins
