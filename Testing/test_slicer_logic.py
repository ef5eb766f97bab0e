"""The module's Logic and LiverE2NetLib on Slicer's real MRML (slicer-core), with the scripted stand-in child
(Testing/slicer_standins/fake_liver_e2net.py) where the network itself does not matter. The real child runs in
test_slicer_selftest.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from slicer_helpers import FAKE_CHILD, isAlive, nodeIds


@pytest.fixture
def logic(mrmlScene):
    import LiverE2Net

    logic = LiverE2Net.LiverE2NetLogic()
    logic.cliCommand = [sys.executable, str(FAKE_CHILD)]
    return logic


@pytest.fixture
def fakeModel(tmp_path) -> Path:
    """The stand-in child never reads the model; the Logic only checks that the file exists."""
    path = tmp_path / "fake.pt"
    path.write_bytes(b"not read")
    return path


def runFake(mode: str, monkeypatch, tmp_path, isCancelled=lambda: False):
    from LiverE2NetLib.ChildProcess import BlockingProcess, childEnvironment

    monkeypatch.setenv("FAKE_LIVER_E2NET", mode)
    monkeypatch.setenv("FAKE_LIVER_E2NET_PIDS", str(tmp_path / "pids"))
    ct = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "totalseg_example_ct.nii.gz"
    command = [sys.executable, str(FAKE_CHILD), "segment", str(ct), "-o", str(tmp_path / "label.nrrd"),
               "--report", str(tmp_path / "report.json")]
    records = []
    result = BlockingProcess(pollSeconds=0.02).run(command, childEnvironment(), records.append, isCancelled)
    return result, records


def test_progress_parser_joins_partial_lines_and_keeps_the_error_message():
    from LiverE2NetLib.ChildProcess import ProgressParser

    parser = ProgressParser()
    assert parser.feed('{"stage": "stage1", "fraction": 0.1') == []
    records = parser.feed(', "message": "slice 1/9"}\nloading weights\n{"stage": "error", "message": "bad file"}\n')
    assert [record["stage"] for record in records] == ["stage1", "error"]
    assert records[0]["fraction"] == 0.1
    assert parser.errorMessage == "bad file"


def test_blocking_process_follows_progress_to_done(monkeypatch, tmp_path):
    result, records = runFake("ok", monkeypatch, tmp_path)
    assert result.succeeded, result.stderr
    fractions = [record["fraction"] for record in records]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert records[-1]["stage"] == "done"
    assert json.loads((tmp_path / "report.json").read_text())["lesions"]


def test_failure_message_is_the_childs_own_words(monkeypatch, tmp_path):
    result, records = runFake("fail", monkeypatch, tmp_path)
    assert result.exitCode == 2 and not result.succeeded
    assert result.failureMessage().endswith("re-download or re-train the model")
    assert records[-1]["stage"] == "error"


def test_crash_shows_the_last_stderr_line_not_the_traceback(monkeypatch, tmp_path):
    result, _ = runFake("crash", monkeypatch, tmp_path)
    assert result.exitCode == 1
    assert "Traceback" in result.stderr
    assert result.failureMessage() == "RuntimeError: CUDA error: out of memory"


def test_cancel_kills_the_whole_process_tree(monkeypatch, tmp_path):
    pidsFile = tmp_path / "pids"
    result, records = runFake("slow", monkeypatch, tmp_path, isCancelled=pidsFile.exists)
    assert result.cancelled and not result.succeeded
    child, grandchild = (int(pid) for pid in pidsFile.read_text().split())
    assert not isAlive(child) and not isAlive(grandchild)


def test_segment_builds_editable_segments_on_the_ct_grid(logic, sampleCt, fakeModel, mrmlScene, monkeypatch):
    import slicer
    import vtk
    from liver_e2net.segments import SEGMENTS
    from LiverE2NetLib.Segments import centreSliceViews, labelArray, lesionCentreRas, storedReport

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    sliceNode = mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
    compositeNode = mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    segmentationNode = logic.segment(sampleCt, model=fakeModel, probabilities=True)

    assert segmentationNode.GetName() == "CT segmentation"
    segmentation = segmentationNode.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        info.name for info in SEGMENTS]
    assert segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()) is sampleCt
    # The label map the child wrote comes back voxel for voxel on the CT's own grid.
    label = labelArray(segmentationNode, sampleCt)
    report = storedReport(segmentationNode)
    voxelMl = float(np.prod(sampleCt.GetSpacing())) / 1000.0
    assert (label >= 1).sum() * voxelMl == pytest.approx(report["liver_ml"], abs=0.01)
    assert (label == 2).sum() * voxelMl == pytest.approx(report["tumor_ml"], abs=0.01)
    assert report["seconds"]["wall"] > 0
    # Probabilities: one 0..1 volume per segment, the last one shown over the CT.
    probabilities = [segmentationNode.GetNthNodeReference("LiverE2NetProbability", i) for i in range(2)]
    assert [node.GetName() for node in probabilities] == ["CT liver probability", "CT liver tumor probability"]
    assert slicer.util.arrayFromVolume(probabilities[1]).max() == 1.0
    assert compositeNode.GetForegroundVolumeID() == probabilities[1].GetID()
    # Lesion centres come back in RAS and centre the slice views.
    lesion = report["lesions"][0]
    centre = lesionCentreRas(segmentationNode, lesion)
    ijkToRas = vtk.vtkMatrix4x4()
    sampleCt.GetIJKToRASMatrix(ijkToRas)
    expected = ijkToRas.MultiplyPoint((*lesion["centre_ijk"], 1))[:3]
    np.testing.assert_allclose(centre, expected, atol=1e-3)
    centreSliceViews(centre)
    sliceToRas = sliceNode.GetSliceToRAS()
    np.testing.assert_allclose([sliceToRas.GetElement(row, 3) for row in range(3)], centre, atol=1e-3)


def test_result_of_a_transformed_ct_follows_its_transform(logic, sampleCt, fakeModel, mrmlScene, monkeypatch):
    import vtk
    from LiverE2NetLib.Segments import lesionCentreRas, storedReport

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    transform = mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 100.0)
    transform.SetMatrixTransformToParent(shift)
    sampleCt.SetAndObserveTransformNodeID(transform.GetID())
    segmentationNode = logic.segment(sampleCt, model=fakeModel)
    assert segmentationNode.GetTransformNodeID() == transform.GetID()
    lesion = storedReport(segmentationNode)["lesions"][0]
    local = [-lesion["centre_lps_mm"][0], -lesion["centre_lps_mm"][1], lesion["centre_lps_mm"][2]]
    np.testing.assert_allclose(lesionCentreRas(segmentationNode, lesion), [local[0] + 100.0, *local[1:]], atol=1e-3)


def test_replacing_keeps_the_node_and_a_failed_run_keeps_its_segments(logic, sampleCt, fakeModel, mrmlScene,
                                                                      monkeypatch):
    from LiverE2NetLib.Segments import SegmentationError

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    first = logic.segment(sampleCt, model=fakeModel)
    second = logic.segment(sampleCt, model=fakeModel)
    assert second is not first and second.GetName() == "CT segmentation_1"
    replaced = logic.segment(sampleCt, model=fakeModel, tumors=False, outputNode=first)
    assert replaced is first and first.GetSegmentation().GetNumberOfSegments() == 1
    monkeypatch.setenv("FAKE_LIVER_E2NET", "fail")
    before = nodeIds(mrmlScene)
    with pytest.raises(SegmentationError, match="not a readable Liver E2Net checkpoint"):
        logic.segment(sampleCt, model=fakeModel, outputNode=second)
    assert nodeIds(mrmlScene) == before and second.GetSegmentation().GetNumberOfSegments() == 2


def test_a_child_that_cannot_start_is_reported(logic, sampleCt, fakeModel, tmp_path):
    from LiverE2NetLib.Segments import SegmentationError

    logic.cliCommand = [str(tmp_path / "no-python-here")]
    with pytest.raises(SegmentationError, match="cannot start .*no-python-here: No such file or directory"):
        logic.segment(sampleCt, model=fakeModel)


def test_a_child_that_writes_nothing_fails_cleanly(logic, sampleCt, fakeModel, mrmlScene, monkeypatch):
    from LiverE2NetLib.Segments import SegmentationError

    monkeypatch.setenv("FAKE_LIVER_E2NET", "empty")
    before = nodeIds(mrmlScene)
    with pytest.raises(SegmentationError, match="finished without a readable report"):
        logic.segment(sampleCt, model=fakeModel)
    assert nodeIds(mrmlScene) == before


def test_nodes_removed_during_a_run_are_not_resurrected(logic, sampleCt, fakeModel, mrmlScene, monkeypatch):
    from LiverE2NetLib.Segments import SegmentationError

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    earlier = logic.segment(sampleCt, model=fakeModel)
    removeOnce = lambda record: earlier.GetScene() and mrmlScene.RemoveNode(earlier)  # noqa: E731
    replacement = logic.segment(sampleCt, model=fakeModel, outputNode=earlier, progressCallback=removeOnce)
    assert replacement is not earlier and mrmlScene.IsNodePresent(replacement)
    before = nodeIds(mrmlScene)
    before.remove(sampleCt.GetID())
    with pytest.raises(SegmentationError, match="CT volume was removed while it was being segmented"):
        logic.segment(sampleCt, model=fakeModel, progressCallback=lambda record: mrmlScene.RemoveNode(sampleCt))
    assert nodeIds(mrmlScene) == before


def test_missing_python_packages_are_named_with_the_fix(logic, sampleCt, fakeModel, monkeypatch):
    from liver_e2net import protocol
    from liver_e2net.errors import UserInputError

    monkeypatch.setattr(protocol, "RUNTIME_REQUIREMENTS", (*protocol.RUNTIME_REQUIREMENTS, "scikit-nothing>=1"))
    with pytest.raises(UserInputError, match=r"lacks scikit-nothing: click the Liver E2Net panel's Segment"):
        logic.segment(sampleCt, model=fakeModel)


def test_missing_bundled_model_says_how_to_get_one(logic, sampleCt, monkeypatch, tmp_path):
    from liver_e2net.errors import UserInputError

    monkeypatch.setenv("LIVER_E2NET_MODEL", str(tmp_path / "gone.pt"))
    with pytest.raises(UserInputError, match="no bundled model"):
        logic.segment(sampleCt)


def test_unknown_device_or_accuracy_is_refused(logic, sampleCt, fakeModel):
    from liver_e2net.errors import UserInputError
    from LiverE2NetLib.Models import Accuracy

    with pytest.raises(UserInputError, match="Unknown device 'tpu'"):
        logic.segment(sampleCt, model=fakeModel, device="tpu")
    with pytest.raises(UserInputError, match="Unknown accuracy 'perfect': use fast or best"):
        logic.segment(sampleCt, model=fakeModel, accuracy="perfect")
    # The panel's member, the label in any case, or the CLI's --tta value.
    assert {Accuracy.parse(value) for value in (Accuracy.Best, "best", "Best", "multiscale")} == {Accuracy.Best}
    assert Accuracy.parse("none") is Accuracy.Fast


def stlBounds(path: Path) -> np.ndarray:
    import vtk

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return np.array(reader.GetOutput().GetBounds())


def test_stl_export_writes_closed_surfaces_in_the_chosen_frame(logic, sampleCt, fakeModel, monkeypatch, tmp_path):
    from LiverE2NetLib.Surfaces import openEdgeCount

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    segmentationNode = logic.segment(sampleCt, model=fakeModel)
    lps = logic.exportStl(segmentationNode, tmp_path / "new" / "folder")
    ras = logic.exportStl(segmentationNode, tmp_path / "ras", "RAS")
    assert [path.name for path in lps] == ["CT segmentation_Liver tumor_LPS.stl", "CT segmentation_Liver_LPS.stl"]
    assert [path.name for path in ras] == ["CT segmentation_Liver tumor_RAS.stl", "CT segmentation_Liver_RAS.stl"]
    assert sorted(p.name for p in (tmp_path / "ras").iterdir()) == [p.name for p in ras]  # no staging folder left
    for path in lps + ras:
        assert openEdgeCount(path) == 0, path.name
    lpsBounds, rasBounds = stlBounds(lps[1]), stlBounds(ras[1])
    np.testing.assert_allclose(lpsBounds[[0, 1, 2, 3]], -rasBounds[[1, 0, 3, 2]], atol=1e-3)
    np.testing.assert_allclose(lpsBounds[4:], rasBounds[4:], atol=1e-3)


def test_stl_export_refuses_a_folder_it_cannot_create(logic, sampleCt, fakeModel, monkeypatch, tmp_path):
    from liver_e2net.errors import UserInputError

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    segmentationNode = logic.segment(sampleCt, model=fakeModel)
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    with pytest.raises(UserInputError, match="Cannot write STL files to .*: Not a directory. Choose a folder"):
        logic.exportStl(segmentationNode, blocker / "stl")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_stl_export_refuses_a_read_only_folder(logic, sampleCt, fakeModel, monkeypatch, tmp_path):
    from liver_e2net.errors import UserInputError

    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    segmentationNode = logic.segment(sampleCt, model=fakeModel)
    readOnly = tmp_path / "read-only"
    readOnly.mkdir(mode=0o500)
    with pytest.raises(UserInputError, match="Permission denied"):
        logic.exportStl(segmentationNode, readOnly)


def test_stl_export_of_empty_segments_is_refused(logic, sampleCt, mrmlScene, tmp_path):
    from liver_e2net.errors import UserInputError

    segmentationNode = mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(sampleCt)
    segmentationNode.GetSegmentation().AddEmptySegment("Liver", "Liver")
    with pytest.raises(UserInputError, match="only empty segments"):
        logic.exportStl(segmentationNode, tmp_path)


def test_parameter_node_survives_a_saved_scene(logic, sampleCt, mrmlScene, tmp_path):
    import slicer
    from LiverE2NetLib.Batch import BatchFormat, BatchSource
    from LiverE2NetLib.Models import Accuracy, Device
    from LiverE2NetLib.Surfaces import CoordinateSystem
    from slicer_standins import newScene

    import LiverE2Net

    parameters = logic.getParameterNode()
    segmentationNode = mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    parameters.inputVolume, parameters.outputSegmentation = sampleCt, segmentationNode
    parameters.model, parameters.device, parameters.smoothing = "/models/mine.pt", Device.GPU, 0.3
    parameters.segmentTumors, parameters.showProbabilities = False, True
    parameters.stlCoordinates, parameters.accuracy = CoordinateSystem.RAS, Accuracy.Best
    parameters.batchSource, parameters.batchFormat = BatchSource.DICOM, BatchFormat.DICOMSEG
    parameters.batchInputFolder, parameters.batchOutputFolder = "/data/in", "/data/cohort"
    mrmlScene.SetURL(str(tmp_path / "scene.mrml"))
    assert mrmlScene.Commit()

    restoredScene = newScene()
    restoredScene.SetURL(str(tmp_path / "scene.mrml"))
    assert restoredScene.Connect()
    restored = LiverE2Net.LiverE2NetLogic().getParameterNode()
    assert slicer.mrmlScene is restoredScene
    assert restored.inputVolume.GetName() == "CT" and restored.outputSegmentation.GetName() == "result"
    assert (restored.model, restored.device, restored.smoothing) == ("/models/mine.pt", Device.GPU, 0.3)
    assert (restored.segmentTumors, restored.showProbabilities) == (False, True)
    assert restored.stlCoordinates == CoordinateSystem.RAS and restored.accuracy == Accuracy.Best
    assert (restored.batchSource, restored.batchFormat) == (BatchSource.DICOM, BatchFormat.DICOMSEG)
    assert (restored.batchInputFolder, restored.batchOutputFolder) == ("/data/in", "/data/cohort")
    with pytest.raises(ValueError, match="outside"):
        restored.smoothing = 1.5


def test_killing_a_process_without_an_id_touches_nothing():
    """A child still starting has pid 0: killing 'its tree' must not signal our own process group."""
    import subprocess
    import sys

    from LiverE2NetLib.ChildProcess import killProcessTree

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        killProcessTree(0)
        killProcessTree(-1)
        assert bystander.poll() is None  # our own child (and so our group) was left alone
    finally:
        bystander.kill()
