"""Scene side of a result: CT node -> NRRD for the child, label map -> editable segments, report and lesions.

Results enter the scene all at once, after the child succeeded: a failure or a cancel leaves the scene as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import slicer
import vtk
from liver_e2net.protocol import SEGMENTS

REPORT_ATTRIBUTE = "LiverE2Net.Report"  # the run's JSON report, kept on the segmentation node (saved with the scene)
PROBABILITY_ROLE = "LiverE2NetProbability"  # node references from a segmentation to its probability volumes
LPS_FROM_RAS = (-1.0, -1.0, 1.0)


class SegmentationError(RuntimeError):
    """The child failed or its output could not be used; the message is for the user."""


class SegmentationCancelled(SegmentationError):
    pass


def writeVolume(volumeNode, path: Path) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # a temporary file: speed over size
    if not storage.WriteData(volumeNode):
        raise SegmentationError(f"Cannot write '{volumeNode.GetName()}' to {path}: is the temporary folder full?")


def readVolume(path: Path, nodeClass):
    """A volume node outside the scene, so a bad file leaves no trace."""
    node = nodeClass()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise SegmentationError(f"Cannot read the segmentation result {path}.")
    return node


def segmentInfos(tumors: bool):
    """SEGMENTS in label order (label 1 -> first segment ID, as ImportLabelmapToSegmentationNode maps them)."""
    return [info for info in sorted(SEGMENTS, key=lambda info: info.label) if tumors or info.label == 1]


def importResult(labelPath: Path, volumeNode, outputNode, report: dict, tumors: bool, smoothing: float,
                 probabilitiesPath: Path | None = None):
    """Segments "Liver" (and "Liver tumor") from the child's label map into `outputNode` (replaced) or a new node
    named after the volume; shown in slice views and 3D, ready for the Segment Editor."""
    labelmap = readVolume(labelPath, slicer.vtkMRMLLabelMapVolumeNode)
    probabilities = readVolume(probabilitiesPath, slicer.vtkMRMLVectorVolumeNode) if probabilitiesPath else None
    scene = slicer.mrmlScene
    created = []
    backup = None
    if outputNode is None:
        outputNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                             scene.GenerateUniqueName(f"{volumeNode.GetName()} segmentation"))
        created.append(outputNode)
    else:
        backup = slicer.vtkSegmentation()
        backup.DeepCopy(outputNode.GetSegmentation())
    try:
        storeSegments(labelmap, volumeNode, outputNode, tumors)
        outputNode.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report))
        outputNode.CreateDefaultDisplayNodes()
        setSurfaceSmoothing(outputNode, smoothing)
        if probabilities is not None:
            created += replaceProbabilityVolumes(outputNode, probabilities, volumeNode, tumors)
    except Exception:  # undo whatever part of the result reached the scene, then report the error
        for node in created:
            scene.RemoveNode(node)
        if backup is not None:
            outputNode.GetSegmentation().DeepCopy(backup)
        raise
    return outputNode


def storeSegments(labelmapNode, volumeNode, segmentationNode, tumors: bool) -> None:
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    segmentation = segmentationNode.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentIds = vtk.vtkStringArray()
    for info in segmentInfos(tumors):
        segmentId = segmentation.AddEmptySegment(info.name.replace(" ", "_"), info.name, info.color)
        segmentation.GetSegment(segmentId).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), info.terminology)
        segmentIds.InsertNextValue(segmentId)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode,
                                                                                     segmentIds):
        raise SegmentationError("Slicer could not import the label map into segments.")


def setSurfaceSmoothing(segmentationNode, smoothing: float) -> None:
    """(Re)builds the 3D surfaces with Slicer's smoothing factor (0..1); STL export uses the same surfaces."""
    segmentation = segmentationNode.GetSegmentation()
    segmentation.SetConversionParameter(
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule.GetSmoothingFactorParameterName(), str(smoothing))
    segmentationNode.RemoveClosedSurfaceRepresentation()
    segmentationNode.CreateClosedSurfaceRepresentation()


def replaceProbabilityVolumes(segmentationNode, vectorNode, volumeNode, tumors: bool) -> list:
    """One 0..1 volume per segment (the child writes liver, tumor as components), shown as slice foreground."""
    scene = slicer.mrmlScene
    for index in reversed(range(segmentationNode.GetNumberOfNodeReferences(PROBABILITY_ROLE))):
        scene.RemoveNode(segmentationNode.GetNthNodeReference(PROBABILITY_ROLE, index))
    segmentationNode.RemoveNodeReferenceIDs(PROBABILITY_ROLE)
    ijkToRas = vtk.vtkMatrix4x4()
    vectorNode.GetIJKToRASMatrix(ijkToRas)
    nodes = []
    for component, info in enumerate(segmentInfos(tumors)):
        extract = vtk.vtkImageExtractComponents()
        extract.SetInputData(vectorNode.GetImageData())
        extract.SetComponents(component)
        extract.Update()
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{volumeNode.GetName()} {info.name.lower()} probability")
        node.SetIJKToRASMatrix(ijkToRas)
        node.SetAndObserveImageData(extract.GetOutput())
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        if scene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt"):
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileInferno.txt")
        segmentationNode.AddNodeReferenceID(PROBABILITY_ROLE, node.GetID())
        nodes.append(node)
    for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        compositeNode.SetForegroundVolumeID(nodes[-1].GetID())
        compositeNode.SetForegroundOpacity(0.4)
    return nodes


def referenceVolume(segmentationNode):
    return segmentationNode.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())


def storedReport(segmentationNode) -> dict | None:
    text = segmentationNode.GetAttribute(REPORT_ATTRIBUTE) if segmentationNode else None
    return json.loads(text) if text else None


def labelArray(segmentationNode, volumeNode) -> np.ndarray:
    """The segments as one label map [z, y, x] on the volume's grid: 0 background, 1 liver, 2 tumor."""
    scene = slicer.mrmlScene
    label = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    labelmapNode.SetHideFromEditors(True)
    scene.AddNode(labelmapNode)  # the export needs the node in a scene; it leaves again below
    try:
        segmentation = segmentationNode.GetSegmentation()
        for info in segmentInfos(tumors=True):
            segmentId = segmentation.GetSegmentIdBySegmentName(info.name)
            if not segmentId:
                continue
            segmentIds = vtk.vtkStringArray()
            segmentIds.InsertNextValue(segmentId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentationNode, segmentIds, labelmapNode, volumeNode):
                raise SegmentationError(f"Cannot export segment '{info.name}' to a label map.")
            label[slicer.util.arrayFromVolume(labelmapNode) > 0] = info.label
    finally:
        scene.RemoveNode(labelmapNode)
    return label


def ctImage(volumeNode):
    """The volume as a SimpleITK image in LPS, the frame of the core's report code."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volumeNode))
    image.SetSpacing(volumeNode.GetSpacing())
    image.SetOrigin([sign * value for sign, value in zip(LPS_FROM_RAS, volumeNode.GetOrigin())])
    directions = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(directions)
    image.SetDirection([LPS_FROM_RAS[row] * directions.GetElement(row, column) for row in range(3) for column in range(3)])
    return image


def measureSegments(segmentationNode) -> dict:
    """Liver/tumor volume, burden and lesion table of the segments as they are now (after any editing); the run's
    time and device are kept from the stored report."""
    from liver_e2net.report import case_report

    volumeNode = referenceVolume(segmentationNode)
    if volumeNode is None:
        raise SegmentationError(f"'{segmentationNode.GetName()}' has no reference CT volume to measure on.")
    report = storedReport(segmentationNode) or {}
    report.update(case_report(labelArray(segmentationNode, volumeNode), ctImage(volumeNode)))
    segmentationNode.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report))
    return report


def lesionCentreRas(segmentationNode, lesion: dict) -> tuple[float, float, float]:
    """World RAS of a lesion row's LPS centre (through the CT's parent transform, if any)."""
    local = [sign * value for sign, value in zip(LPS_FROM_RAS, lesion["centre_lps_mm"])]
    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(referenceVolume(segmentationNode).GetParentTransformNode(),
                                                         None, toWorld)
    return tuple(toWorld.TransformPoint(local))


def centreSliceViews(ras) -> None:
    for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
        sliceNode.JumpSliceByCentering(*ras)
