"""Training pairs (CT volume + liver/tumor segmentation) found in a scene, a saved scene or a folder of files.

Each pair is checked when it is found, so the panel can show why a pair is skipped before anything is exported.
Segment roles come from the core's name rules (`segment_role`), so Slicer and the `train` command agree.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from liver_e2net.errors import UserInputError
from liver_e2net.training.labels import segment_role
from liver_e2net.training.sources import discover, volume_stem
from vtk.util.numpy_support import vtk_to_numpy

BINARY_LABELMAP = "Binary labelmap"
LABEL_WORDS = ("label", "labels", "seg", "segmentation", "mask", "gt")  # 'case02_label.nii.gz' is a label
IMAGE_WORDS = ("ct", "image", "img", "volume", "0000")  # 'case02_ct.nii.gz' is its CT


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


def pairsInFolder(folder: str | Path) -> list[TrainingPair]:
    """An nnU-Net folder (imagesTr/ + labelsTr/) or a flat folder of 'NAME_ct.nii.gz' + 'NAME_label.nii.gz'."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"folder not found: {folder}")
    if (folder / "imagesTr").is_dir():
        found = [(case.name, case.image, case.label) for case in discover(folder)]
        unpaired = []
    else:
        found, unpaired = _flatPairs(folder)
    if not found and not unpaired:
        raise UserInputError(f"{folder} holds no CT + label pairs (NAME_ct.nii.gz + NAME_label.nii.gz, "
                             ".nrrd or .seg.nrrd, or imagesTr/ + labelsTr/)")
    pairs = [checkFilePair(TrainingPair(name, str(folder), imagePath=image, labelPath=label))
             for name, image, label in found]
    for path, partner in unpaired:
        pairs.append(TrainingPair(path.name, str(folder), imagePath=path, labelPath=path,
                                  problem=f"no {partner} file with the same case name"))
    return pairs


def _flatPairs(folder: Path) -> tuple[list[tuple[str, Path, Path]], list[tuple[Path, str]]]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = volume_stem(path) if path.is_file() else None
        if stem is None:
            continue
        labelKey = _stripWord(stem, LABEL_WORDS)
        if labelKey != stem or path.name.lower().endswith(".seg.nrrd"):
            labels[labelKey] = path
        else:
            images[_stripWord(stem, IMAGE_WORDS)] = path
    found = [(name, images[name], labels[name]) for name in sorted(images.keys() & labels.keys())]
    unpaired = [(images[name], "label") for name in sorted(images.keys() - labels.keys())]
    unpaired += [(labels[name], "CT") for name in sorted(labels.keys() - images.keys())]
    return found, unpaired


def _stripWord(stem: str, words: tuple[str, ...]) -> str:
    match = re.fullmatch(rf"(.+?)[_.-]({'|'.join(words)})", stem, flags=re.IGNORECASE)
    return match.group(1) if match else stem


def readFilePair(pair: TrainingPair):
    """(CT image, label array) of a file pair, read and checked by the core's own training readers."""
    from liver_e2net.io import read_ct
    from liver_e2net.training.labels import read_label

    ct = read_ct(pair.imagePath)
    return ct, read_label(pair.labelPath, ct)


def checkFilePair(pair: TrainingPair) -> TrainingPair:
    pair.problem = pair.warning = ""
    try:
        ct, label = readFilePair(pair)
    except UserInputError as error:
        pair.problem = str(error)
        return pair
    direction = np.reshape(ct.GetDirection(), (3, 3))
    pair.slices = int(ct.GetSize()[int(np.argmax(np.abs(direction[2])))])
    pair.hasTumor = bool((label == 2).any())
    if not (label == 1).any():
        pair.problem = "only tumor voxels (value 2), no liver (value 1): label the liver too (tumors lie inside it)"
    return pair
