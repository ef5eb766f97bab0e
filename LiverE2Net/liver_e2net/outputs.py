"""A case's output set (label maps, probabilities, STL surfaces, JSON report), written all or nothing.

`segment` and `segment-batch` both write through `OutputSet`: every file goes to a hidden temporary beside its
target, is checked (size, header read back, NIfTI completeness), and only when all of them check out are they
renamed into place together. A failure, SIGINT or SIGTERM before the end removes every temporary and every file
the set already renamed: a user never finds a cut-short file, nor a partial set that looks complete. A lock per
target makes a second run to the same output fail at once instead of both claiming success.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import UserInputError
from .io import (
    human_size,
    input_warnings,
    labelmap_image,
    output_format,
    publish,
    temporary_beside,
    write_failure,
)
from .io import written_image_problem as image_problem
from .report import case_report
from .surfaces import segment_meshes, write_stl

try:
    import fcntl

    def _try_lock(handle: int) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

except ImportError:  # Windows
    import msvcrt

    def _try_lock(handle: int) -> bool:
        try:
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


TTA_SCALE_RANGE = (0.5, 2.0)  # beyond 2 the stage-2 input (and memory) grows without bound
MAX_SMOOTHING_MM = 10.0  # more blurs a liver into a blob; larger values only cost time
PROBABILITY_FORMATS = ("nifti", "nrrd", "mha")
NIFTI_DATA_OFFSET = 352  # NIfTI-1 header (348 bytes) and the 4-byte extension flag ITK writes
NIFTI_SLAB = 32  # slices per write when streaming probabilities


@dataclass(frozen=True)
class OutputTargets:
    """Where one case's outputs go; `labels` maps a format ('nifti', 'seg.nrrd', 'dicom-seg', ...) to its file."""

    labels: dict[str, Path]
    probabilities: Path | None = None
    stl: Path | None = None
    report: Path | None = None
    preview: Path | None = None  # review PNG (axial, coronal, 3D)
    smoothing: float = 1.0
    base: Path | None = None  # report paths relative to this folder (a batch case folder); None: absolute

    def files(self) -> dict[str, Path]:
        named = {
            **self.labels,
            "probabilities": self.probabilities,
            "STL folder": self.stl,
            "report": self.report,
            "preview": self.preview,
        }
        return {name: Path(path) for name, path in named.items() if path}

    def check(self, source: str | Path | None = None) -> None:
        """Refuses, before any work, outputs that would overwrite the input or each other, and paths that cannot
        take the file asked for."""
        if self.probabilities and _format(self.probabilities) not in PROBABILITY_FORMATS:
            raise UserInputError(
                f"--probabilities {self.probabilities}: use .nii.gz, .nii, .nrrd or .mha (a 2-component image)"
            )
        if self.preview and not str(self.preview).lower().endswith(".png"):
            raise UserInputError(f"--preview {self.preview}: the review figure is a PNG; end the name in .png")
        for kind, path in self.labels.items():
            if kind != "dicom-seg":
                output_format(path)
        files = self.files()
        seen: dict[Path, str] = {} if source is None else {_identity(source): "the input"}
        for name, path in files.items():
            other = seen.setdefault(_identity(path), f"the {name} output")
            if other != f"the {name} output":
                raise UserInputError(
                    f"{path} is both {other} and the {name} output; give each output its own path"
                )
            if path.is_dir() and name != "STL folder":
                raise UserInputError(f"the {name} output {path} is a folder; give a file name")
            if name == "STL folder" and path.exists() and not path.is_dir():
                raise UserInputError(f"--stl {path} is a file; give a folder for the STL surfaces")
        check_writable([p for n, p in files.items() if n != "STL folder"], self.stl)

    def estimated_bytes(self, voxels: int) -> dict[Path, int]:
        """A low estimate of each file's size, to refuse a run the disk cannot take before the work."""
        sizes = {
            path: _image_bytes(path, voxels, 1, 50)
            for kind, path in self.labels.items()
            if kind != "dicom-seg"
        }
        if self.probabilities:
            sizes[self.probabilities] = _image_bytes(self.probabilities, voxels, 8, 4)
        if self.report:
            sizes[self.report] = 16 * 2**10
        return sizes


def _format(path: Path) -> str:
    try:
        return output_format(path)
    except UserInputError:
        return ""


def _image_bytes(path: Path, voxels: int, per_voxel: int, compression: int) -> int:
    raw = voxels * per_voxel + 352
    return raw if str(path).lower().endswith(".nii") else raw // compression


def _identity(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def check_writable(files: Iterable[str | Path | None], folder: str | Path | None = None) -> None:
    """Fail before the work, not after it, when an output cannot be written."""
    for path in [Path(p) for p in files if p]:
        _check_folder(path.parent, f"cannot write {path}")
    if folder:
        _check_folder(Path(folder), f"cannot write STL files to {folder}")


def _check_folder(folder: Path, what: str) -> None:
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserInputError(f"{what}: {existing} is not a writable folder")


def check_numbers(
    threads: int | None = None,
    tta_scales: Iterable[float] = (),
    smoothing: float = 1.0,
    min_lesion_ml: float | None = None,
) -> None:
    """Refuses numeric options that would crash, hang or exhaust memory after minutes of work."""
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads}: give 1 or more (or leave it out for the default)")
    for scale in tta_scales:
        if not TTA_SCALE_RANGE[0] <= scale <= TTA_SCALE_RANGE[1]:  # also refuses nan
            raise UserInputError(
                f"--tta-scales {scale}: each scale must be within {TTA_SCALE_RANGE[0]}-{TTA_SCALE_RANGE[1]}"
            )
    if not 0 <= smoothing <= MAX_SMOOTHING_MM:
        raise UserInputError(f"--smoothing {smoothing}: give 0-{MAX_SMOOTHING_MM:g} mm")
    if min_lesion_ml is not None and not (math.isfinite(min_lesion_ml) and min_lesion_ml >= 0):
        raise UserInputError(f"--min-lesion-ml {min_lesion_ml}: give a volume >= 0 ml")


def check_space(needs: dict[Path, int]) -> None:
    """Refuses a run whose outputs cannot fit on their disks, before the work."""
    by_disk: dict[Path, int] = {}
    for path, size in needs.items():
        folder = next(p for p in [path.absolute().parent, *path.absolute().parents] if p.exists())
        disk = next((d for d in by_disk if os.stat(d).st_dev == os.stat(folder).st_dev), folder)
        by_disk[disk] = by_disk.get(disk, 0) + size
    for folder, needed in by_disk.items():
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise UserInputError(
                f"no space left on {folder}: {human_size(free)} free, about {human_size(needed)} needed; "
                "free some space or choose another output folder"
            )


@dataclass
class OutputSet:
    """Locks the targets, stages files as temporaries, and renames them all or removes them all (see module)."""

    targets: Iterable[Path]
    staged: dict[Path, tuple[Path, str]] = field(default_factory=dict)  # target -> (temporary, check)
    renamed: list[Path] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # folders this set made, removed again if left empty
    locks: list[tuple[Path, int]] = field(default_factory=list)
    pending: int | None = None  # a signal that arrived while renaming: acted on once the renames are done
    deferring: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def __enter__(self) -> OutputSet:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for target in dict.fromkeys(Path(t) for t in self.targets):
                self._lock(target)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.deferring = True  # a second signal must not cut the clean-up short
        if kind is not None or self.pending is not None:
            self._roll_back()
        for path, handle in reversed(self.locks):
            with suppress(OSError):
                path.unlink()
            os.close(handle)
        self._remove_empty_folders()
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def stage(self, target: Path, check: str = "size") -> Path:
        """A temporary for `target`; `check` is how it is verified before the rename: size, image, stl, json."""
        self._make_folder(target.parent)
        suffix = ".nrrd" if str(target).lower().endswith(".nrrd") else ""
        self.staged[target] = (temporary_beside(target, suffix), check)
        return self.staged[target][0]

    def write(self, target: Path, write, check: str = "size", needed: int = 0) -> None:
        """Stages `target` and runs write(temporary); a failure becomes a message naming the file and cause."""
        temporary = self.stage(target, check)
        try:
            write(temporary)
        except (OSError, RuntimeError) as error:
            raise write_failure(target, error, needed) from error
        problem = _problem(temporary, check)
        if problem:
            raise write_failure(target, problem, needed)

    def entry(self, target: Path, base: Path | None = None) -> dict[str, Any]:
        """Path (relative to base, else absolute), size and SHA-256 of a staged file: the same before and after
        the rename."""
        temporary = self.staged[target][0]
        path = target.relative_to(base).as_posix() if base else str(target.absolute())
        return {"path": path, "bytes": temporary.stat().st_size, "sha256": sha256(temporary)}

    def commit(self) -> None:
        """Renames every staged file into place; a signal meanwhile is held back, then undoes all of it."""
        self.deferring = True
        try:
            for target, (temporary, _) in self.staged.items():
                publish(temporary, target)
                self.renamed.append(target)
        except OSError as error:
            raise write_failure(target, error) from error
        finally:
            self.deferring = False
        if self.pending is not None:
            raise KeyboardInterrupt(f"signal {self.pending}")

    def _on_signal(self, number: int, frame) -> None:
        if self.deferring:
            self.pending = number
            return
        raise KeyboardInterrupt(f"signal {number}")

    def _roll_back(self) -> None:
        for temporary, _ in self.staged.values():
            temporary.unlink(missing_ok=True)
        for target in self.renamed:
            target.unlink(missing_ok=True)

    def _lock(self, target: Path) -> None:
        """An OS lock on '.<name>.lock' beside the target: released by the kernel even if this process dies."""
        self._make_folder(target.parent)
        path = target.parent / f".{target.name}.lock"
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(handle):
                os.close(handle)
                raise UserInputError(
                    f"{target} is being written by another run right now (lock {path}); "
                    "wait for it to finish or choose another output"
                )
            try:
                current = os.stat(path).st_ino == os.fstat(handle).st_ino
            except FileNotFoundError:
                current = False
            if current:  # not a lock file the previous holder removed between our open and lock
                self.locks.append((path, handle))
                return
            os.close(handle)

    def _make_folder(self, folder: Path) -> None:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserInputError(f"cannot create folder {folder}: {error.strerror}") from error
        self.created.extend(reversed(missing))

    def _remove_empty_folders(self) -> None:
        for folder in reversed(self.created):
            with suppress(OSError):
                folder.rmdir()  # only if empty


def write_all(files: dict[Path, tuple[Callable[[Path], object], str]]) -> None:
    """Small files, {target: (write(temporary), check)}, written all or nothing through one OutputSet."""
    with OutputSet(files) as outputs:
        for target, (write, check) in files.items():
            outputs.write(target, write, check)
        outputs.commit()


def _problem(path: Path, check: str) -> str:
    size = path.stat().st_size
    if size == 0:
        return "the written file is empty (disk full?)"
    if check == "image":
        return image_problem(path)
    if check == "stl":
        with open(path, "rb") as stream:
            stream.seek(80)
            faces = int.from_bytes(stream.read(4), "little")
        return "" if size == 84 + 50 * faces else "the written STL file is cut short (disk full?)"
    if check == "json":
        try:
            json.loads(path.read_text())
        except ValueError:
            return "the written JSON file is cut short (disk full?)"
    return ""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_case_outputs(
    outputs: OutputSet,
    targets: OutputTargets,
    result,
    ct: sitk.Image,
    report: dict[str, Any] | None = None,
    dicom: tuple[list[str], str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Stages and checks every output of one case, the report last (it lists the others), then renames them all.
    Returns {output: path, bytes, sha256}. Takes the probability map out of `result` to free its memory.
    Warnings that come up while writing (a DICOM SEG given a new FrameOfReferenceUID) are added to
    report["warnings"], so the written report and the caller's record both list them."""
    voxels = int(np.prod(ct.GetSize()))
    if targets.probabilities:
        outputs.write(
            targets.probabilities,
            _probability_writer(result, ct, targets.probabilities),
            "image",
            _needed(targets, voxels),
        )
        result.probabilities = None
    for kind, path in targets.labels.items():
        if kind == "dicom-seg":
            from .dicom_seg import write_dicom_seg

            found: list[str] = []
            outputs.write(
                path,
                lambda temporary, found=found: write_dicom_seg(
                    result.label, dicom[0], temporary, dicom[1], found
                ),
            )
            if report is not None:
                report["warnings"] = _merged(report.get("warnings", []), found)
        else:
            image = labelmap_image(result.label, ct, path)
            outputs.write(path, _image_writer(image), "image", _needed(targets, voxels))
    if targets.stl:
        write_surfaces(outputs, targets.stl, result.label, ct, targets.smoothing)
    if targets.preview:
        from .preview import draw_preview

        title = Path(str((report or {}).get("input", ""))).name
        outputs.write(targets.preview, lambda temporary: draw_preview(ct, result.label, temporary, title))
    entries = {_key(targets, path): outputs.entry(path, targets.base) for path in outputs.staged}
    if targets.report:
        document = {**(report or {}), "outputs": entries}
        outputs.write(targets.report, lambda t: t.write_text(json.dumps(document, indent=2)), "json")
    outputs.commit()
    return entries


def _needed(targets: OutputTargets, voxels: int) -> int:
    return sum(targets.estimated_bytes(voxels).values())


def _image_writer(image: sitk.Image):
    return lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=True)


def _key(targets: OutputTargets, path: Path) -> str:
    names = {p: k for k, p in targets.files().items()}
    return names.get(path) or f"stl/{path.name}"


def _probability_writer(result, reference: sitk.Image, target: Path):
    """NIfTI is streamed from the map; NRRD and MHA go through one 2-component image (their writers copy
    nothing more), as does a NIfTI too large for NIfTI-1's 16-bit sizes."""
    stream = _format(target) == "nifti" and max(reference.GetSize()) < 2**15

    def write(temporary: Path) -> None:
        if stream:
            write_probability_nifti(result.probabilities, reference, temporary)
        else:
            sitk.WriteImage(probability_image(result, reference), str(temporary), useCompression=True)

    return write


def probability_image(result, reference: sitk.Image) -> sitk.Image:
    """The 2-component float image: a zero image with the probability box pasted in place, so the image is the
    only whole-volume copy (a 512x512x800 CT: 1.7 GB)."""
    image = sitk.Image(reference.GetSize(), sitk.sitkVectorFloat32, 2)
    image.CopyInformation(reference)
    box = result.probability_box or tuple(slice(0, n) for n in result.probabilities.shape[1:])
    inside = np.moveaxis(result.probabilities[(slice(None), *box)], 0, -1)
    if inside.size:
        image[box[2], box[1], box[0]] = sitk.GetImageFromArray(inside, isVector=True)
    return image


def write_probability_nifti(probabilities: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """The [2, z, y, x] map as the 2-component NIfTI that ITK writes, streamed a slab at a time: ITK's NIfTI
    writer reorders a vector image into a second whole copy (3.4 GB more for a 512x512x800 CT). The file stores
    the components one after the other, so the header (ITK's, of a one-voxel image with this geometry, given
    this size) and then each channel's slices in order make the same bytes."""
    header = _nifti_header(reference, path)
    compressed = str(path).lower().endswith(".gz")
    with gzip.open(path, "wb", compresslevel=6) if compressed else open(path, "wb") as stream:
        stream.write(header)
        for channel in probabilities:
            for start in range(0, channel.shape[0], NIFTI_SLAB):
                stream.write(channel[start : start + NIFTI_SLAB].astype("<f4", copy=False).tobytes())


def _nifti_header(reference: sitk.Image, path: Path) -> bytes:
    """ITK's header and extension flag (352 bytes) for a 2-component float image on `reference`'s grid."""
    voxel = sitk.Image([1, 1, 1], sitk.sitkVectorFloat32, 2)
    voxel.SetSpacing(reference.GetSpacing())
    voxel.SetOrigin(reference.GetOrigin())
    voxel.SetDirection(reference.GetDirection())
    scratch = path.with_name(path.name + ".header.nii")
    try:
        sitk.WriteImage(voxel, str(scratch), useCompression=False)
        header = bytearray(scratch.read_bytes()[:NIFTI_DATA_OFFSET])
    finally:
        scratch.unlink(missing_ok=True)
    header[42:48] = np.asarray(reference.GetSize(), "<i2").tobytes()  # dim[1..3]
    return bytes(header)


def write_surfaces(
    outputs: OutputSet, folder: Path, label: np.ndarray, ct: sitk.Image, smoothing: float
) -> None:
    """One STL per non-empty segment, staged in `folder` like every other output."""
    for name, title, vertices, faces in segment_meshes(label, ct, smoothing):
        outputs.write(folder / name, lambda t, v=vertices, f=faces, n=title: write_stl(t, v, f, n), "stl")


def model_summary(checkpoint) -> dict[str, Any]:
    return {
        "path": str(checkpoint.path) if checkpoint.path else None,
        "name": checkpoint.metadata.get("name"),
        "config": checkpoint.config.name,
        "description": checkpoint.describe(),
    }


def report_fields(
    source: str | Path, segmenter, result, ct: sitk.Image, tta: str, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The one report shape of `segment --report` and a batch's case.json (which adds its bookkeeping)."""
    return {
        "input": str(Path(source).absolute()),
        "model": model or model_summary(segmenter.checkpoint),
        "device": str(segmenter.device),
        "threads": segmenter.threads,
        "precision": segmenter.precision,
        "tta": {"mode": tta, "scales": list(segmenter.tta.scales), "flip": segmenter.tta.flip},
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        **case_report(result.label, ct),
        "false_positive_filter": {
            "used": result.rejected_candidates is not None,
            "rejected_candidates": result.rejected_candidates or 0,
        },
        "min_lesion_ml": result.min_lesion_ml,
        "warnings": case_warnings(ct, result),
        "liver_e2net": __version__,
    }


def case_warnings(ct: sitk.Image, result) -> list[str]:
    """Everything the user was warned about for this case: what reading left out of the input (a localizer, a
    non-DICOM file), then what segmentation found (no liver, flip TTA on a model not trained for it)."""
    return _merged(input_warnings(ct), result.warnings)


def _merged(*lists: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))
