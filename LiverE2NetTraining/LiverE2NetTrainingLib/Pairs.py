"""Training pairs (CT volume + liver/tumor segmentation) found in a scene, a saved scene or a folder of files.

Each pair is checked when it is found, so the panel can show why a pair is skipped before anything is exported.
Segment roles come from the name rules in `protocol` (`segment_role`), so Slicer and the `train` command agree;
file pairs are found and read by the core itself (`liver-e2net check-data`, a child process).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from liver_e2net.errors import UserInputError
from liver_e2net.protocol import STAGE_CHECK, segment_role
from LiverE2NetLib.ChildProcess import BlockingProcess, childEnvironment
from vtk.util.numpy_support import vtk_to_numpy

BINARY_LABELMAP = "Binary labelmap"


@dataclass
class TrainingPair:
    """One CT with its label, from the scene (nodes) or from files. `problem` says why it is skipped."""

    name: str
    origin: str  # where it came from, for the table's tooltip
    volumeNode: object = None
    segmentationNode: object = None
    scene: object = None  # keeps a scene loaded from a file alive as long as its pairs
    imagePath: Path | None = None
    labelPath: Path | None = None
    segmentNames: dict[str, str] = field(default_factory=dict)  # segment ID -> name
    liverSegmentIds: tuple[str, ...] = ()
    tumorSegmentIds: tuple[str, ...] = ()
    slices: int = 0
    hasTumor: bool = False
    problem: str = ""
    warning: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem

    @property
    def fromFiles(self) -> bool:
        return self.imagePath is not None


# -- segment roles ---------------------------------------------------------------------------------------------


def segmentRole(segment) -> str | None:
    """'liver', 'tumor' or None: by name first, else by the terminology's type ('Neoplasm', 'Liver')."""
    role = segment_role(segment.GetName())
    if role is None and segment.HasTerminology():
        fields = segment.GetTerminology().split("~")  # context~category~type~type modifier~...
        meanings = [part.split("^")[-1] for part in fields[2:4] if part.count("^") == 2]
        role = segment_role(" ".join(meanings)) if meanings else None
    return role


def matchSegments(segmentationNode) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """(ID -> name of every segment, liver segment IDs, tumor segment IDs)."""
    segmentation = segmentationNode.GetSegmentation()
    names, liver, tumor = {}, [], []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        names[segmentId] = segment.GetName()
        role = segmentRole(segment)
        if role == "liver":
            liver.append(segmentId)
        elif role == "tumor":
            tumor.append(segmentId)
    return names, tuple(liver), tuple(tumor)


# -- label arrays from segmentations -----------------------------------------------------------------------------


def _segmentsMask(pair: TrainingPair, segmentIds: tuple[str, ...]) -> np.ndarray:
    """Union of the segments, rasterised on the CT's grid: [k, j, i] bool."""
    volumeNode = pair.volumeNode
    if not segmentIds:
        return np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, bool)
    scene = volumeNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__training_export")
    try:
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            pair.segmentationNode, list(segmentIds), labelmap, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not exported:
            raise UserInputError(f"{pair.name}: the segments could not be converted to a label map on the CT's grid")
        return slicer.util.arrayFromVolume(labelmap) > 0
    finally:
        scene.RemoveNode(labelmap)


def labelArray(pair: TrainingPair) -> np.ndarray:
    """{0 background, 1 liver, 2 tumor} on the CT's grid; tumor wins where segments overlap."""
    liver, tumor = _segmentsMask(pair, pair.liverSegmentIds), _segmentsMask(pair, pair.tumorSegmentIds)
    return np.where(tumor, 2, np.where(liver, 1, 0)).astype(np.uint8)


def _segmentVoxels(segmentationNode, segmentId: str) -> int:
    """Voxels of a segment in its own binary labelmap (shared layers hold several label values)."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    image = segment.GetRepresentation(BINARY_LABELMAP)
    if image is None or image.GetPointData().GetScalars() is None:
        return 0
    return int(np.count_nonzero(vtk_to_numpy(image.GetPointData().GetScalars()) == segment.GetLabelValue()))


def _matrix(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _gridMismatch(volumeNode, segmentationNode, segmentIds: tuple[str, ...]) -> str:
    """Why a labelmap segment's voxels do not fall on the CT's voxels (other spacing, rotation, half-voxel shift)."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    rasToIjk = np.linalg.inv(_matrix(ijkToRas))
    for segmentId in segmentIds:
        image = segmentationNode.GetSegmentation().GetSegment(segmentId).GetRepresentation(BINARY_LABELMAP)
        if image is None or image.IsEmpty():
            continue  # an empty segment has no grid of its own
        imageToWorld = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(imageToWorld)
        relative = rasToIjk @ _matrix(imageToWorld)  # segment voxel -> CT voxel; identity + whole shift if aligned
        if not np.allclose(relative[:3, :3], np.eye(3), atol=1e-3):
            return (f"voxel size {_fmtSpacing(image.GetSpacing())} mm or orientation differs from the CT's "
                    f"{_fmtSpacing(volumeNode.GetSpacing())} mm")
        if not np.allclose(relative[:3, 3], np.round(relative[:3, 3]), atol=1e-2):
            return "its voxels are shifted by a fraction of a voxel against the CT's"
    return ""


def _fmtSpacing(spacing) -> str:
    return " x ".join(f"{value:.3g}" for value in spacing)


def axialSlices(volumeNode) -> int:
    """Slices along the image axis closest to the patient's head-foot axis."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    axis = int(np.argmax(np.abs(_matrix(ijkToRas)[2, :3])))
    return int(volumeNode.GetImageData().GetDimensions()[axis])


# -- checking a pair ---------------------------------------------------------------------------------------------


def checkPair(pair: TrainingPair) -> TrainingPair:
    """Fills slices / hasTumor and sets `problem` (skipped) or `warning` (used) for a scene pair."""
    pair.problem = pair.warning = ""
    volumeNode, segmentationNode = pair.volumeNode, pair.segmentationNode
    if volumeNode.GetImageData() is None:
        pair.problem = "the CT has no voxels (its file could not be read)"
        return pair
    pair.slices = axialSlices(volumeNode)
    transformed = [node.GetName() for node in (volumeNode, segmentationNode) if node.GetParentTransformNode()]
    if transformed:
        pair.problem = f"{' and '.join(transformed)} is under a transform: harden the transform first"
        return pair
    if not pair.liverSegmentIds:
        names = ", ".join(repr(name) for name in pair.segmentNames.values()) or "none"
        pair.problem = ("only tumor segments, no liver segment: draw the liver too (tumors lie inside it)"
                        if pair.tumorSegmentIds else
                        f"no liver segment among the segments ({names}): name it 'Liver' or choose it in the table")
        return pair
    usedIds = pair.liverSegmentIds + pair.tumorSegmentIds
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSourceRepresentationName() == BINARY_LABELMAP:
        mismatch = _gridMismatch(volumeNode, segmentationNode, usedIds)
        if mismatch:
            pair.problem = (f"segmentation and CT grids differ ({mismatch}): pair the segmentation with the CT it "
                            "was drawn on, or resample it onto this CT")
            return pair
    liver = _segmentsMask(pair, pair.liverSegmentIds)
    tumor = _segmentsMask(pair, pair.tumorSegmentIds)
    if not liver.any():
        drawn = sum(_segmentVoxels(segmentationNode, segmentId) for segmentId in pair.liverSegmentIds)
        pair.problem = ("the liver segment lies outside the CT volume: the segmentation does not overlap its CT"
                        if drawn else "the liver segment is empty")
        return pair
    pair.hasTumor = bool(tumor.any())
    if segmentation.GetSourceRepresentationName() == BINARY_LABELMAP:
        drawn = sum(_segmentVoxels(segmentationNode, segmentId) for segmentId in usedIds)
        inside = int(np.count_nonzero(liver)) + int(np.count_nonzero(tumor))
        if drawn > inside:
            pair.warning = f"{drawn - inside} segment voxels lie outside the CT and are left out"
    return pair


def setSegments(pair: TrainingPair, liverSegmentIds, tumorSegmentIds) -> TrainingPair:
    """The per-pair override of the name matching."""
    pair.liverSegmentIds, pair.tumorSegmentIds = tuple(liverSegmentIds), tuple(tumorSegmentIds)
    return checkPair(pair)


# -- finding pairs -----------------------------------------------------------------------------------------------


def pairsInScene(scene, origin: str = "scene") -> list[TrainingPair]:
    """Every segmentation whose reference geometry is a scalar volume, with liver or tumor segments."""
    pairs = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        segmentationNode = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        volumeNode = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA(
                "vtkMRMLLabelMapVolumeNode"):
            continue
        names, liver, tumor = matchSegments(segmentationNode)
        if not (liver or tumor):
            continue
        pair = TrainingPair(volumeNode.GetName(), origin, volumeNode, segmentationNode, segmentNames=names,
                            liverSegmentIds=liver, tumorSegmentIds=tumor)
        pairs.append(checkPair(pair))
    return pairs


def readScene(path: str | Path):
    """A saved scene (.mrml or .mrb) read into a scene of its own, so the user's scene stays as it is."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"scene file not found: {path}")
    scene = slicer.vtkMRMLScene()
    scene.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()  # registers segmentation classes
    scene.segmentationsLogic.SetMRMLScene(scene)
    if path.suffix.lower() == ".mrb":
        with tempfile.TemporaryDirectory(prefix="LiverE2NetTraining-") as remoteCache:  # required, unused here
            cacheManager = slicer.vtkCacheManager()
            cacheManager.SetRemoteCacheDirectory(remoteCache)
            dataIOManager = slicer.vtkDataIOManager()
            dataIOManager.SetCacheManager(cacheManager)
            scene.SetCacheManager(cacheManager)
            scene.SetDataIOManager(dataIOManager)
            loaded = scene.ReadFromMRB(str(path))
    elif path.suffix.lower() == ".mrml":
        scene.SetURL(str(path))
        loaded = scene.Connect()
    else:
        raise UserInputError(f"{path.name}: a saved scene is a .mrb or .mrml file")
    if not loaded and not scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode"):
        raise UserInputError(f"cannot read the scene {path}: is it a Slicer scene file?")
    return scene  # a node whose file failed to load makes its pair show why; the others are still usable


def pairsInSceneFile(path: str | Path) -> list[TrainingPair]:
    scene = readScene(path)
    pairs = pairsInScene(scene, origin=str(path))
    for pair in pairs:
        pair.scene = scene
    return pairs


def pairsInFolder(folder: str | Path, cli: list[str] | None = None) -> list[TrainingPair]:
    """File pairs of a folder (imagesTr/ + labelsTr/, or NAME_ct + NAME_label files) or of a JSON list, found and
    read by `liver-e2net check-data` as `train` finds and reads them, in a child: no SimpleITK in Slicer's process."""
    return [filePair(record, str(folder)) for record in checkData(["--data", str(folder)], cli)]


def checkData(arguments: list[str], cli: list[str] | None = None) -> list[dict]:
    """The child's record of each pair and each file without a partner; its own message when it found none."""
    from .Run import cliCommand

    records = []
    command = [*(cli or cliCommand()), "check-data", *arguments, "--progress", "jsonl"]
    result = BlockingProcess().run(command, childEnvironment(),
                                   lambda record: record["stage"] == STAGE_CHECK and records.append(record))
    if not records:  # with records, a non-zero exit only says there are fewer than 2 usable pairs here
        raise UserInputError(result.failureMessage() if not result.succeeded else
                             f"`liver-e2net check-data {' '.join(arguments)}` found no pairs")
    return records


def filePair(record: dict, origin: str) -> TrainingPair:
    if "file" in record:  # pairs with nothing: it is shown with the reason
        path = Path(record["file"])
        return TrainingPair(record["name"], origin, imagePath=path, labelPath=path, problem=record["problem"])
    return TrainingPair(record["name"], origin, imagePath=Path(record["image"]), labelPath=Path(record["label"]),
                        slices=record["slices"], hasTumor=record["tumor"], problem=record["problem"],
                        warning=record["warning"])
