"""Training pairs on real MRML (slicer-core) from real CT and masks of ../shared/data: found in a scene, a saved
.mrb/.mrml and a folder, checked (with the reason a pair is skipped), and exported with geometry and labels kept."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from core_helpers import shared_case


@pytest.fixture
def training(mrmlScene):
    """The module file, imported after the stand-ins are installed."""
    import LiverE2NetTraining

    return LiverE2NetTraining


def load(scene, path, name, className="vtkMRMLScalarVolumeNode"):
    """A volume file read into the scene by a storage node, as Slicer loads it."""

    node = scene.AddNewNodeByClass(className, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), path
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def addCase(scene, ctPath, labelPath, name, segmentNames=("Liver", "Liver tumor")):
    """CT + a segmentation that references it, one segment per label value, as a user's scene has them."""
    import slicer

    from LiverE2NetTraining import addSegmentation

    ct = load(scene, ctPath, name)
    labelNode = load(scene, labelPath, "label", "vtkMRMLLabelMapVolumeNode")
    label = slicer.util.arrayFromVolume(labelNode)
    scene.RemoveNode(labelNode)
    masks = {segmentName: label == value for value, segmentName in enumerate(segmentNames, start=1)
             if (label == value).any()}
    return ct, addSegmentation(ct, masks)


@pytest.fixture(scope="module")
def tumorCrop(tmp_path_factory):
    """Six slices of the IRCAD CT (case01) through its real tumors, CT and label, in a temporary folder only."""
    folder = tmp_path_factory.mktemp("case01")
    ct, label = sitk.ReadImage(str(shared_case("case01_ct.nii.gz"))), sitk.ReadImage(str(shared_case("case01_label.nii.gz")))
    tumorSlices = np.flatnonzero((sitk.GetArrayViewFromImage(label) == 2).any(axis=(1, 2)))
    first = int(tumorSlices[len(tumorSlices) // 2])
    sitk.WriteImage(ct[:, :, first:first + 6], str(folder / "case01_ct.nii.gz"))
    sitk.WriteImage(label[:, :, first:first + 6], str(folder / "case01_label.nii.gz"))
    return folder / "case01_ct.nii.gz", folder / "case01_label.nii.gz"


def assertSameGrid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_export_keeps_geometry_and_label_values(training, mrmlScene, tumorCrop, tmp_path):
    """case01 (real tumors, LPS-ordered) and case03 (3 mm, direction flipped on disk) through scene -> files."""
    cases = {"case01": tumorCrop, "case03": (shared_case("case03_ct.nii.gz"), shared_case("case03_label.nii.gz"))}
    for name, (ctPath, labelPath) in cases.items():
        addCase(mrmlScene, ctPath, labelPath, name)
    logic = training.LiverE2NetTrainingLogic()
    pairs = logic.pairsInScene()
    assert [(p.name, p.slices, p.hasTumor, p.usable) for p in pairs] == [("case01", 6, True, True),
                                                                         ("case03", 53, False, True)]
    assert logic.exportTrainingPairs(pairs, tmp_path / "data") == ["case01", "case03"]
    for name, (ctPath, labelPath) in cases.items():
        exportedCt = sitk.ReadImage(str(tmp_path / "data" / "imagesTr" / f"{name}_0000.nrrd"))
        exportedLabel = sitk.ReadImage(str(tmp_path / "data" / "labelsTr" / f"{name}.nrrd"))
        originalCt, originalLabel = sitk.ReadImage(str(ctPath)), sitk.ReadImage(str(labelPath))
        for exported in (exportedCt, exportedLabel):
            assertSameGrid(exported, originalCt)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(exportedCt), sitk.GetArrayFromImage(originalCt))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(exportedLabel), sitk.GetArrayFromImage(originalLabel))
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "data/labelsTr/case01.nrrd"))))) == {0, 1, 2}
    listing = json.loads((tmp_path / "data" / "pairs.json").read_text())
    assert [(m["name"], m["image"], m["label"], m["liverSegments"], m["tumorSegments"]) for m in listing] == [
        ("case01", "imagesTr/case01_0000.nrrd", "labelsTr/case01.nrrd", ["Liver"], ["Liver tumor"]),
        ("case03", "imagesTr/case03_0000.nrrd", "labelsTr/case03.nrrd", ["Liver"], [])]
    # The exported list is what `train --data` reads, and the core's own reader agrees on every label.
    from liver_e2net.training import discover
    from liver_e2net.training.cases import read_case

    cases = discover(tmp_path / "data" / "pairs.json")
    assert [case.name for case in cases] == ["case01", "case03"]
    assert int((read_case(cases[0])[1] == 2).sum()) == int((sitk.GetArrayFromImage(sitk.ReadImage(str(tumorCrop[1]))) == 2).sum())


def test_saved_scenes_yield_the_same_pairs(training, mrmlScene, tmp_path):
    import slicer
    from LiverE2NetTrainingLib.Pairs import labelArray

    addCase(mrmlScene, shared_case("case03_ct.nii.gz"), shared_case("case03_label.nii.gz"), "case03")
    addCase(mrmlScene, shared_case("case04_ct.nii.gz"), shared_case("case04_label.nii.gz"), "case04")
    logic = training.LiverE2NetTrainingLogic()
    before = logic.pairsInScene()
    assert mrmlScene.WriteToMRB(str(tmp_path / "pairs.mrb"))
    # A .mrml scene: each node's data written by its storage node, then the XML.
    mrmlFolder = tmp_path / "mrml"
    mrmlFolder.mkdir()
    storable = [mrmlScene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
                for i in range(mrmlScene.GetNumberOfNodesByClass("vtkMRMLStorableNode"))]
    for node in storable:
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(mrmlFolder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    mrmlScene.SetURL(str(mrmlFolder / "pairs.mrml"))
    mrmlScene.SetRootDirectory(str(mrmlFolder))
    assert mrmlScene.Commit()
    for path in (tmp_path / "pairs.mrb", mrmlFolder / "pairs.mrml"):
        after = logic.pairsInSceneFile(path)
        assert [(p.name, p.slices, p.hasTumor, p.usable, sorted(p.segmentNames.values())) for p in after] == \
               [(p.name, p.slices, p.hasTumor, p.usable, sorted(p.segmentNames.values())) for p in before], path
        for old, new in zip(before, after):
            np.testing.assert_array_equal(labelArray(new), labelArray(old))
            assert new.volumeNode.GetScene() is not mrmlScene and new.scene is new.volumeNode.GetScene()
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(new.volumeNode),
                                          slicer.util.arrayFromVolume(old.volumeNode))
    with pytest.raises(ValueError, match="a .mrb or .mrml file"):
        logic.pairsInSceneFile(shared_case("case04_ct.nii.gz"))


def test_segments_are_matched_by_name_or_terminology(training, mrmlScene):
    import slicer
    from liver_e2net.segments import SEGMENTS

    ct = load(mrmlScene, shared_case("case04_ct.nii.gz"), "case04")
    shape = slicer.util.arrayFromVolume(ct).shape
    block = np.zeros(shape, bool)
    block[:, 200:300, 200:300] = True
    ball = np.zeros(shape, bool)
    ball[:, 240:250, 240:250] = True
    names = ["LIVER", "liver tumour", "Lesion 2", "Portal vein", "Segment_1"]
    segmentation = training.addSegmentation(ct, {name: ball if name != "LIVER" else block for name in names})
    byName = {segmentation.GetSegmentation().GetSegment(i).GetName(): i for i in
              segmentation.GetSegmentation().GetSegmentIDs()}
    pair = training.LiverE2NetTrainingLogic().pairsInScene()[0]
    assert pair.liverSegmentIds == (byName["LIVER"],) and pair.usable and pair.hasTumor
    assert pair.tumorSegmentIds == (byName["liver tumour"], byName["Lesion 2"])  # 'Portal vein', 'Segment_1' ignored
    # Terminology decides when the name says nothing: Slicer's "Liver" and "Neoplasm" entries.
    segment = segmentation.GetSegmentation().GetSegment(byName["Segment_1"])
    for info, expected in ((SEGMENTS[0], "liverSegmentIds"), (SEGMENTS[1], "tumorSegmentIds")):
        segment.SetTerminology(info.terminology)
        pair = training.LiverE2NetTrainingLogic().pairsInScene()[0]
        assert byName["Segment_1"] in getattr(pair, expected)


def test_bad_pairs_are_skipped_with_a_reason_and_can_be_fixed(training, mrmlScene):
    import slicer
    import vtk

    ct = load(mrmlScene, shared_case("case04_ct.nii.gz"), "case04")
    label = slicer.util.arrayFromVolume(load(mrmlScene, shared_case("case04_label.nii.gz"), "l",
                                             "vtkMRMLLabelMapVolumeNode")) > 0
    unnamed = training.addSegmentation(ct, {"Segment_1": label})
    tumorOnly = training.addSegmentation(ct, {"Tumor": label})
    emptyLiver = training.addSegmentation(ct, {})
    emptyLiver.GetSegmentation().AddEmptySegment("Liver", "Liver")
    ijkToRas = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(ijkToRas)
    outside = training.addSegmentation(ct, {"Liver": label}, origin=ijkToRas.MultiplyPoint((0, 0, 40, 1))[:3])
    halfVoxel = training.addSegmentation(ct, {"Liver": label}, origin=ijkToRas.MultiplyPoint((0.5, 0, 0, 1))[:3])
    coarse = mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # drawn on a coarser grid than the CT's
    coarse.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    coarseLabel = mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Liver")
    coarseLabel.CopyOrientation(ct)
    coarseLabel.SetSpacing(1.6, 1.6, 1.0)
    slicer.util.updateVolumeFromArray(coarseLabel, label[:, ::2, ::2].astype(np.uint8))
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(coarseLabel, coarse)
    transformed = training.addSegmentation(ct, {"Liver": label})
    transformed.SetAndObserveTransformNodeID(mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    pairs = {pair.segmentationNode.GetID(): pair for pair in training.LiverE2NetTrainingLogic().pairsInScene()}
    assert unnamed.GetID() not in pairs  # no liver/tumor segment at all: not a training pair
    expected = {tumorOnly: "only tumor segments, no liver segment", emptyLiver: "the liver segment is empty",
                outside: "the segmentation does not overlap its CT",
                halfVoxel: "shifted by a fraction of a voxel", coarse: "voxel size 1.6 x 1.6 x 1 mm",
                transformed: "under a transform: harden the transform first"}
    for node, reason in expected.items():
        assert reason in pairs[node.GetID()].problem, (node.GetName(), pairs[node.GetID()].problem)
    # A crop that reaches outside the CT is used, with a note.
    partly = training.addSegmentation(ct, {"Liver": label}, origin=ijkToRas.MultiplyPoint((0, 0, 2, 1))[:3])
    pair = next(p for p in training.LiverE2NetTrainingLogic().pairsInScene() if p.segmentationNode is partly)
    assert pair.usable and "lie outside the CT and are left out" in pair.warning
    # The per-pair override: the tumor-only pair's segment is the liver after all.
    logic = training.LiverE2NetTrainingLogic()
    fixed = logic.setSegments(pairs[tumorOnly.GetID()], pairs[tumorOnly.GetID()].tumorSegmentIds, ())
    assert fixed.usable and not fixed.hasTumor


def test_folder_pairs_are_paired_by_name_and_checked_by_the_core(training, tmp_path):
    """The real `liver-e2net check-data` child pairs and reads the files; file pairs are exported as a list of their
    own paths (nothing is rewritten)."""
    from liver_e2net.errors import UserInputError

    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("case03", "case04"):
        for kind in ("ct", "label"):
            shutil.copy(shared_case(f"{name}_{kind}.nii.gz"), folder / f"{name}_{kind}.nii.gz")
    label = sitk.ReadImage(str(folder / "case04_label.nii.gz"))
    sitk.WriteImage(label * 2, str(folder / "tumoronly_label.nii.gz"))  # liver voxels relabelled as tumor
    shutil.copy(folder / "case04_ct.nii.gz", folder / "tumoronly_ct.nii.gz")
    sitk.WriteImage(label * 255, str(folder / "mask255_seg.nii.gz"))
    shutil.copy(folder / "case04_ct.nii.gz", folder / "mask255.nii.gz")
    shutil.copy(folder / "case04_ct.nii.gz", folder / "lonely_ct.nii.gz")
    (folder / "notes.txt").write_text("not a volume")
    pairs = {pair.name: pair for pair in training.LiverE2NetTrainingLogic().pairsInFolder(folder)}
    assert sorted(pairs) == ["case03", "case04", "lonely_ct.nii.gz", "mask255", "tumoronly"]
    assert (pairs["case03"].slices, pairs["case03"].usable, pairs["case04"].slices) == (53, True, 3)
    assert "no label file" in pairs["lonely_ct.nii.gz"].problem
    assert "only tumor voxels" in pairs["tumoronly"].problem
    assert "label values 255 outside" in pairs["mask255"].problem
    assert pairs["mask255"].imagePath == folder / "mask255.nii.gz"  # unmarked: the CT its label lacks
    names = training.LiverE2NetTrainingLogic().exportTrainingPairs(list(pairs.values()), tmp_path / "data")
    assert names == ["case03", "case04"]
    listing = json.loads((tmp_path / "data" / "pairs.json").read_text())
    assert [(m["name"], m["image"], m["label"]) for m in listing] == [
        (name, str(folder / f"{name}_ct.nii.gz"), str(folder / f"{name}_label.nii.gz")) for name in names]
    assert not (tmp_path / "data" / "imagesTr").exists()
    # The list reads back as the same pairs, and an nnU-Net folder pairs as `train` pairs it.
    again = training.LiverE2NetTrainingLogic().pairsInFolder(tmp_path / "data" / "pairs.json")
    assert [(p.name, p.slices, p.usable) for p in again] == [("case03", 53, True), ("case04", 3, True)]
    nnunet = tmp_path / "nnunet"
    for sub in ("imagesTr", "labelsTr"):
        (nnunet / sub).mkdir(parents=True)
    shutil.copy(folder / "case03_ct.nii.gz", nnunet / "imagesTr" / "case03_0000.nii.gz")
    shutil.copy(folder / "case03_label.nii.gz", nnunet / "labelsTr" / "case03.nii.gz")
    shutil.copy(folder / "case04_ct.nii.gz", nnunet / "imagesTr" / "case04_0000.nii.gz")
    found = training.LiverE2NetTrainingLogic().pairsInFolder(nnunet)
    assert [(p.name, p.usable, p.problem.split(";")[0]) for p in found] == [
        ("case03", True, ""), ("case04_0000.nii.gz", False, "no label case04.ext in labelsTr/")]
    # Nothing to pair: the child's own message.
    with pytest.raises(UserInputError, match=r"holds no CT \+ label pairs"):
        training.LiverE2NetTrainingLogic().pairsInFolder(tmp_path / "data")


def test_export_refusals_name_the_fix(training, mrmlScene, tmp_path):
    from liver_e2net.errors import UserInputError

    logic = training.LiverE2NetTrainingLogic()
    with pytest.raises(UserInputError, match="No usable training pairs: add CT volumes"):
        logic.exportTrainingPairs([], tmp_path / "a")
    addCase(mrmlScene, shared_case("case04_ct.nii.gz"), shared_case("case04_label.nii.gz"), "case04")
    with pytest.raises(UserInputError, match="Only one usable training pair"):
        logic.exportTrainingPairs(logic.pairsInScene(), tmp_path / "a")
    addCase(mrmlScene, shared_case("case04_ct.nii.gz"), shared_case("case04_label.nii.gz"), "case04")
    addCase(mrmlScene, shared_case("case03_ct.nii.gz"), shared_case("case03_label.nii.gz"), "case03")
    foreign = tmp_path / "theirs"
    (foreign / "imagesTr").mkdir(parents=True)
    with pytest.raises(UserInputError, match="written by something else"):
        logic.exportTrainingPairs(logic.pairsInScene(), foreign)
    # Same names get unique files; a second export removes what the first one wrote, and only that.
    assert logic.exportTrainingPairs(logic.pairsInScene(), tmp_path / "ok") == ["case04", "case04_2", "case03"]
    (tmp_path / "ok" / "imagesTr" / "keep.txt").write_text("the user's")
    assert logic.exportTrainingPairs(logic.pairsInScene()[:2], tmp_path / "ok") == ["case04", "case04_2"]
    assert sorted(p.name for p in (tmp_path / "ok" / "imagesTr").iterdir()) == [
        "case04_0000.nrrd", "case04_2_0000.nrrd", "keep.txt"]
    assert sorted(p.name for p in (tmp_path / "ok" / "labelsTr").iterdir()) == ["case04.nrrd", "case04_2.nrrd"]
