"""Reading and writing volumes (SimpleITK), label maps, Slicer .seg.nrrd and STL surfaces.

A `Volume` holds the array indexed [z, y, x] (SimpleITK's GetArrayFromImage order) with spacing, origin and
direction in SimpleITK's (x, y, z) LPS convention, so any file can be written back on its exact grid.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .cohort.dicom_tree import folder_series
from .errors import UserInputError
from .nifti_integrity import nifti_problem, nonfinite_message
from .protocol import ct_range_problem
from .segments import SEGMENTS

PLAUSIBLE_SPACING_MM = ((0.2, 5.0), (0.3, 10.0))  # (in-plane pixel, between slices) of any clinical CT
INPUT_WARNINGS_KEY = "LiverE2Net_InputWarnings"  # image metadata: what reading left out (see input_warnings)

log = logging.getLogger("liver_e2net")


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
    if path.is_dir():
        series = folder_series(path)
        for note in series.notes:
            log.warning("warning: %s", note)
        return with_input_warnings(read_dicom_series(series.files, str(path)), series.notes)
    if not path.is_file():  # a named pipe would block the reader forever, a device never ends
        raise UserInputError(
            f"{path} is not a regular file (a pipe or device?); pass a volume file or a DICOM folder"
        )
    problem = nifti_problem(path)  # SimpleITK zero-fills a cut NIfTI, reads NaN as 0 and pixdim 0 as 1 mm
    if problem:
        raise UserInputError(problem)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserInputError(
            f"cannot read {path}: {_itk_message(error)}; is it a NIfTI/NRRD/MHA file or a DICOM folder?"
        ) from error


def read_dicom_series(files: Sequence[str], source: str) -> sitk.Image:
    """The one reader of DICOM series (`segment` on a folder, `segment-batch` on a tree): `files` come sorted
    along the slice normal from dicom_tree, whose checks (gaps, mixed geometry, cut files) ran before."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    try:
        return reader.Execute()
    except RuntimeError as error:
        culprit = next((f for f in files if not _readable(f)), None)
        where = f"{culprit} cannot be read" if culprit else _itk_message(error)
        raise UserInputError(
            f"cannot read the DICOM series {source}: {where}; copy the series again or remove that file"
        ) from error


def _readable(path: str) -> bool:
    try:
        sitk.ReadImage(path)
    except RuntimeError:
        return False
    return True


def _itk_message(error: RuntimeError) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def with_input_warnings(image: sitk.Image, notes: Sequence[str]) -> sitk.Image:
    """Attaches what reading left out to the image, so that `segment` and `segment-batch` report it alike."""
    image.SetMetaData(INPUT_WARNINGS_KEY, "\n".join(notes))
    return image


def input_warnings(image: sitk.Image) -> list[str]:
    """What reading left out of the input (e.g. a localizer in a DICOM series), for reports and case records."""
    if not image.HasMetaDataKey(INPUT_WARNINGS_KEY):
        return []
    return [line for line in image.GetMetaData(INPUT_WARNINGS_KEY).split("\n") if line]


def read_ct(path: str | Path) -> sitk.Image:
    """Reads a CT and refuses what cannot be one: 2D, multi-component (RGB), constant, non-HU values, NaN,
    implausible voxel sizes."""
    return check_ct(read_image(path), str(path))


def read_ct_series(files: Sequence[str], source: str, notes: Sequence[str] = ()) -> sitk.Image:
    """A DICOM series found in a tree (segment-batch), refused like `segment` refuses a folder; `notes` (what
    discovery left out of it) go with the image into the case's record."""
    return check_ct(with_input_warnings(read_dicom_series(files, source), notes), source)


def check_ct(image: sitk.Image, name: str) -> sitk.Image:
    if image.GetDimension() != 3:
        raise UserInputError(f"{name} is a {image.GetDimension()}D image; a CT volume (3D) is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); "
            "a scalar CT volume in Hounsfield units is needed"
        )
    check_ct_geometry(image.GetSpacing(), image.GetDirection(), name)
    check_ct_values(sitk.GetArrayViewFromImage(image), name)
    return image


def check_ct_geometry(spacing: Sequence[float], direction: Sequence[float], name: str) -> None:
    """(x, y, z) spacing in mm and the 9 direction cosines. A wrong voxel size makes every volume in ml wrong
    (10 mm pixels gave a 350 l liver) and shows the network the anatomy at the wrong scale."""
    spacing = np.asarray(spacing, float)
    sizes = " x ".join(f"{s:g}" for s in spacing)
    if not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise UserInputError(
            f"{name} has voxel size {sizes} mm, not a usable size; write it again with the true voxel size"
        )
    for axis, value, (low, high) in (
        ("an in-plane pixel", spacing[0], PLAUSIBLE_SPACING_MM[0]),
        ("an in-plane pixel", spacing[1], PLAUSIBLE_SPACING_MM[0]),
        ("a slice", spacing[2], PLAUSIBLE_SPACING_MM[1]),
    ):
        if not low <= value <= high:
            raise UserInputError(
                f"{name} has voxel size {sizes} mm: {axis} of {value:g} mm is outside {low:g}-{high:g} mm, "
                "so it is not a CT voxel size (a header in cm or m, or a resampled image?); "
                "write it again with the true voxel size in mm"
            )
    matrix = np.asarray(direction, float).reshape(3, 3)
    if not np.isfinite(matrix).all() or not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-3):
        raise UserInputError(
            f"{name} has a direction matrix that is not a rotation ({np.round(matrix, 3).tolist()}); "
            "write it again with its true orientation"
        )


def check_ct_values(array: np.ndarray, name: str) -> None:
    if array.dtype.kind in "fc":  # NaN would slip through every comparison below
        slices = array.reshape(array.shape[0] if array.ndim > 2 else 1, -1)  # [z, y * x]
        problem = nonfinite_message(name, (~np.isfinite(slices)).sum(axis=1), slices.shape[0])
        if problem:
            raise UserInputError(problem)
    problem = ct_range_problem(name, float(array.min()), float(array.max()))
    if problem:
        raise UserInputError(problem)


@contextmanager
def atomic_output(path: str | Path, suffix: str = "", check=None) -> Iterator[Path]:
    """Yields a temporary path beside `path` and renames it into place only if the block succeeds and
    `check(temporary)` (if given) passes; a failed write becomes a UserInputError naming the file and the cause."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"output {path} is a folder; give a file name such as {path / 'liver.nii.gz'}")
    temporary = temporary_beside(path, suffix)
    try:
        try:
            yield temporary
            if check:
                check(temporary)
        except (OSError, RuntimeError) as error:
            raise write_failure(path, error) from error
        publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def temporary_beside(path: Path, suffix: str = "") -> Path:
    """An empty hidden file '.<name>.<random><suffix>' in the target's folder (created if needed), so that the
    final rename stays on one file system."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes)
        )
        os.close(handle)
    except OSError as error:
        raise UserInputError(f"cannot write {path}: {error.strerror}; choose a writable location") from error
    return Path(temporary)


def publish(temporary: Path, path: Path) -> None:
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    os.replace(temporary, path)


def write_failure(path: Path, error: BaseException | str, needed: int = 0) -> UserInputError:
    """What went wrong writing `path`, in the user's terms: a full disk says how much is free and needed."""
    folder = next(
        p for p in [Path(path).parent.absolute(), *Path(path).parent.absolute().parents] if p.exists()
    )
    free = shutil.disk_usage(folder).free
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or free < max(needed, 2**20):
        cause = (
            f"no space left on {folder}: {human_size(free)} free, about {human_size(max(needed, 1))} needed"
        )
    elif code == errno.EFBIG:
        cause = "the file size limit of this process was reached (ulimit -f)"
    elif isinstance(error, str):
        cause = error
    else:
        cause = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return UserInputError(f"cannot write {path}: {cause}")


def human_size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.0f} {unit}"
    return f"{count} bytes"


def written_image_problem(path: Path, size: tuple[int, ...] | None = None) -> str:
    """'' if the image just written reads back whole; ITK reports a full disk as success for NIfTI."""
    problem = nifti_problem(path, check_values=False)  # our own probabilities: completeness is what can fail
    if problem:
        return "the written file is cut short (disk full or a file size limit?)"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        return f"the written file does not read back ({str(error).strip().splitlines()[-1]})"
    if size is not None and tuple(reader.GetSize()) != tuple(size):
        return f"the written file has size {reader.GetSize()}, not {tuple(size)}"
    return ""


def check_written_image(size: tuple[int, ...] | None = None):
    """A `check` for atomic_output: refuses an image that does not read back whole."""

    def check(path: Path) -> None:
        problem = written_image_problem(path, size)
        if problem:
            raise OSError(problem)

    return check


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
    image = labelmap_image(label, reference, path)
    with atomic_output(path, check=check_written_image(image.GetSize())) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
    return Path(path)


def labelmap_image(label: np.ndarray, reference: sitk.Image, path: str | Path) -> sitk.Image:
    """The uint8 label image on the reference grid, with Slicer's segment header when `path` is .seg.nrrd."""
    kind = output_format(path)
    image = sitk.GetImageFromArray(label.astype(np.uint8, copy=False))
    image.CopyInformation(reference)
    if kind == "seg.nrrd":
        add_segment_metadata(image, label)
    return image


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
