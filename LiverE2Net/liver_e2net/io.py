"""Reading and writing volumes (SimpleITK), label maps, Slicer .seg.nrrd and STL surfaces.

A `Volume` holds the array indexed [z, y, x] (SimpleITK's GetArrayFromImage order) with spacing, origin and
direction in SimpleITK's (x, y, z) LPS convention, so any file can be written back on its exact grid.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserInputError
from .nifti_integrity import nifti_problem
from .segments import SEGMENTS

PLAUSIBLE_HU = (
    -3100.0,
    40000.0,
)  # GE pads with -3024; dense metal reaches tens of thousands only in extended CT


@dataclass
class Volume:
    array: np.ndarray  # [z, y, x]
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, SimpleITK convention

    @classmethod
    def from_image(cls, image: sitk.Image) -> Volume:
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def to_image(self, array: np.ndarray | None = None) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def read_image(path: str | Path) -> sitk.Image:
    """A file SimpleITK reads (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"input not found: {path}")
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise UserInputError(
                    f"{path} is a folder without a DICOM series; pass a volume file or a DICOM folder"
                )
            if len(series) > 1:
                raise UserInputError(
                    f"{path} holds {len(series)} DICOM series; pass the folder of one series"
                )
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        problem = nifti_problem(path)  # SimpleITK zero-fills a cut-short NIfTI without a word
        if problem:
            raise UserInputError(problem)
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UserInputError(
            f"cannot read {path}: {message}; is it a NIfTI/NRRD/MHA file or a DICOM folder?"
        ) from error


def read_ct(path: str | Path) -> sitk.Image:
    """Reads a CT and refuses what cannot be one: 2D, multi-component (RGB), constant, non-HU values."""
    image = read_image(path)
    if image.GetDimension() != 3:
        raise UserInputError(f"{path} is a {image.GetDimension()}D image; a CT volume (3D) is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); "
            "a scalar CT volume in Hounsfield units is needed"
        )
    check_ct_values(sitk.GetArrayViewFromImage(image), str(path))
    return image


def check_ct_values(array: np.ndarray, name: str) -> None:
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise UserInputError(f"{name} is constant ({low:g} everywhere): it holds no image")
    if low < PLAUSIBLE_HU[0] or high > PLAUSIBLE_HU[1]:
        raise UserInputError(
            f"{name} has values {low:g}..{high:g}, outside any CT in Hounsfield units; pass a CT volume in HU"
        )
    if low > -200:
        raise UserInputError(
            f"{name} does not look like CT in Hounsfield units: its lowest value is {low:g}, but air "
            "outside the body is about -1000 HU. If it is a CT stored without its rescale intercept, "
            "subtract 1024; MRI and other modalities are not supported"
        )


@contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path` and renames it into place only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"output {path} is a folder; give a file name such as {path / 'liver.nii.gz'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes)
        )
        os.close(handle)
    except OSError as error:
        raise UserInputError(f"cannot write {path}: {error.strerror}; choose a writable location") from error
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix, kind in (
        (".seg.nrrd", "seg.nrrd"),
        (".nii.gz", "nifti"),
        (".nii", "nifti"),
        (".nrrd", "nrrd"),
        (".mha", "mha"),
    ):
        if name.endswith(suffix):
            return kind
    raise UserInputError(f"unsupported output file type: {path}; use .nii.gz, .nii, .nrrd, .mha or .seg.nrrd")


def write_labelmap(label: np.ndarray, reference: sitk.Image, path: str | Path) -> Path:
    """Writes the {0,1,2} label map on the reference grid; .seg.nrrd gets Slicer segment names and colours."""
    kind = output_format(path)
    image = sitk.GetImageFromArray(label.astype(np.uint8))
    image.CopyInformation(reference)
    if kind == "seg.nrrd":
        add_segment_metadata(image, label)
    with atomic_output(path, suffix=".nrrd" if "nrrd" in kind else None) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
    return Path(path)


def add_segment_metadata(image: sitk.Image, label: np.ndarray) -> None:
    """The NRRD header keys Slicer's segmentation storage node reads (one layer, label values 1 and 2)."""
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    size = image.GetSize()
    extent = f"0 {size[0] - 1} 0 {size[1] - 1} 0 {size[2] - 1}"
    for index, segment in enumerate(SEGMENTS):
        prefix = f"Segment{index}_"
        image.SetMetaData(prefix + "ID", segment.name.replace(" ", "_"))
        image.SetMetaData(prefix + "Name", segment.name)
        image.SetMetaData(prefix + "NameAutoGenerated", "0")
        image.SetMetaData(prefix + "Color", " ".join(f"{c:.6f}" for c in segment.color))
        image.SetMetaData(prefix + "ColorAutoGenerated", "0")
        image.SetMetaData(prefix + "LabelValue", str(segment.label))
        image.SetMetaData(prefix + "Layer", "0")
        image.SetMetaData(prefix + "Extent", extent)
        image.SetMetaData(prefix + "Tags", f"TerminologyEntry:{segment.terminology}|")
