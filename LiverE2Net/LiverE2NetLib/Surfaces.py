"""STL export of the (possibly edited) segments with Slicer's own segmentation logic."""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
from pathlib import Path

import slicer
import vtk
from liver_e2net.errors import UserInputError


class CoordinateSystem(enum.Enum):
    LPS = "LPS"  # what DICOM, ITK and most 3D printing / planning software expect
    RAS = "RAS"  # Slicer's world frame


def exportStl(segmentationNode, folder, coordinateSystem: CoordinateSystem = CoordinateSystem.LPS) -> list[Path]:
    """One closed surface per non-empty segment, `<node>_<segment>_<LPS|RAS>.stl` in `folder` (created if needed)."""
    if segmentationNode is None:
        raise UserInputError("No segmentation to export: run the segmentation first.")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".stl-", dir=folder))  # also proves the folder is writable
    except OSError as error:
        raise UserInputError(f"Cannot write STL files to {folder}: {error.strerror}. "
                             "Choose a folder you can write to.") from None
    try:
        segmentIds = nonEmptySegmentIds(segmentationNode)
        if not segmentIds.GetNumberOfValues():
            raise UserInputError(f"'{segmentationNode.GetName()}' has only empty segments: nothing to export.")
        lps = coordinateSystem == CoordinateSystem.LPS
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
                str(staging), segmentationNode, segmentIds, "STL", lps, 1.0, False):
            raise UserInputError(f"Slicer could not write the STL files to {folder}.")
        written = []
        for path in sorted(staging.glob("*.stl")):
            target = folder / f"{path.stem}_{coordinateSystem.value}.stl"
            os.replace(path, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def nonEmptySegmentIds(segmentationNode) -> vtk.vtkStringArray:
    """Segments with a surface: an empty segment would give an STL file without triangles."""
    segmentationNode.CreateClosedSurfaceRepresentation()
    segmentation = segmentationNode.GetSegmentation()
    surfaceName = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segmentIds = vtk.vtkStringArray()
    for index in range(segmentation.GetNumberOfSegments()):
        surface = segmentation.GetNthSegment(index).GetRepresentation(surfaceName)
        if surface is not None and surface.GetNumberOfCells() > 0:
            segmentIds.InsertNextValue(segmentation.GetNthSegmentID(index))
    return segmentIds


def openEdgeCount(stlPath) -> int:
    """Boundary edges (holes) of an STL file: 0 for a watertight surface. Non-manifold pinches are not counted:
    where smoothing brings the two sides of a one-voxel-thin part within single precision (STL's), they meet in
    a point of the file although Slicer's own surface keeps them apart; the surface stays closed."""
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(stlPath))
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(reader.GetOutputPort())
    edges = vtk.vtkFeatureEdges()
    edges.SetInputConnection(clean.GetOutputPort())
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOff()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    clean.Update()
    if clean.GetOutput().GetNumberOfCells() == 0:
        return -1  # no surface at all is not a closed surface either
    return edges.GetOutput().GetNumberOfCells()
