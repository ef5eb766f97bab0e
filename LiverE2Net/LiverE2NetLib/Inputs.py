"""Refuse what cannot be segmented before any work starts, with a message that names the fix."""

from __future__ import annotations

from pathlib import Path

from liver_e2net import protocol
from liver_e2net.errors import UserInputError

from .Dependencies import missingMessage


def checkDependencies() -> None:
    """The child runs in Slicer's own Python: refuse before any work when a package it needs is not there."""
    message = missingMessage()
    if message:
        raise UserInputError(message)


def checkInputVolume(volumeNode) -> None:
    """A 3D scalar CT in Hounsfield units; label maps, RGB/vector volumes and single slices are refused."""
    if volumeNode is None:
        raise UserInputError("No CT volume selected: choose one in 'CT volume'.")
    name = volumeNode.GetName()
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise UserInputError(f"'{name}' is a label map, not a CT: choose the CT volume it was drawn on.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise UserInputError(f"'{name}' is a {volumeNode.GetClassName()}, not a scalar volume: choose a CT volume.")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise UserInputError(f"'{name}' has no voxels: load the CT again.")
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or imageData.GetNumberOfScalarComponents() != 1:
        raise UserInputError(f"'{name}' has {imageData.GetNumberOfScalarComponents()} components per voxel (RGB or "
                             "vector image): a scalar CT volume in Hounsfield units is needed.")
    dimensions = imageData.GetDimensions()
    if min(dimensions) < 2:
        raise UserInputError(f"'{name}' is a 2D image ({dimensions[0]} x {dimensions[1]} x {dimensions[2]} voxels): "
                             "a 3D CT volume with several axial slices is needed.")
    problem = protocol.ct_range_problem(f"'{name}'", *imageData.GetScalarRange())  # the child's own rule
    if problem:
        raise UserInputError(problem)


def resolveModel(model: str | Path | None) -> Path:
    """`model` as given, or the bundled checkpoint when None or empty."""
    if model:
        path = Path(model)
        if not path.is_file():
            raise UserInputError(f"Model file not found: {path}. Choose another model or put the file back.")
        return path
    bundled = protocol.default_model_path()
    if bundled is None or not bundled.is_file():
        raise UserInputError("No model selected and no bundled model in Resources/Models: train one with the "
                             "Liver E2Net Training module or copy a .pt file into your model folder.")
    return bundled
