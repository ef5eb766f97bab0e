"""DICOM trees -> one candidate CT per series: axial CT images kept, localizers and non-CT objects skipped.

Only headers are read here (no pixels), so a large tree is sorted quickly; the checks catch the series SimpleITK
would silently read wrong: a slice file cut short or damaged (GDCM drops it), gaps, several acquisitions in one
series. A localizer stored in the CT's own series (common on GE) is left out with a note. `segment` on a folder
(folder_series) and `segment-batch` on a tree (group_series) choose slices here and read them with
io.read_dicom_series: one path for both.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..protocol import is_dicom_file

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT (multi-frame)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
}
HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "PatientID",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "NumberOfFrames",
]
AXIAL_MIN_COSINE = 0.8  # slice normal within ~37 degrees of the body axis: axial, gantry tilt allowed


@dataclass(frozen=True)
class Series:
    """One CT series ready to read: `files` sorted along the slice normal; `problem` set when it cannot be read
    correctly (the case is then recorded as failed with that message)."""

    uid: str
    name: str
    folder: str
    files: tuple[str, ...]
    problem: str = ""
    notes: tuple[str, ...] = ()  # images of the series left out (a localizer), said to the user


@dataclass(frozen=True)
class Rejected:
    source: str
    reason: str


def folder_series(folder: str | Path) -> Series:
    """The one CT series in `folder` (not its subfolders, as a DICOM folder is read), for `segment`; refuses a
    folder without one, with several, or with a series that cannot be read correctly. Its notes say what was
    left out (files that are not DICOM, localizers, other objects)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    dicom = [str(p) for p in files if is_dicom_file(p)]
    if not dicom:
        raise UserInputError(
            f"{folder} is a folder without DICOM files; pass a volume file or a DICOM folder"
        )
    series, rejected = group_series(dicom)
    if not series:
        reasons = "; ".join(f"{r.source}: {r.reason}" for r in rejected[:3])
        raise UserInputError(
            f"{folder} holds no DICOM CT series to read ({reasons}); pass a CT series folder"
        )
    if len(series) > 1:
        names = ", ".join(f"{s.name}: {len(s.files)} images" for s in series)
        raise UserInputError(
            f"{folder} holds {len(series)} CT series ({names}); pass the folder of one series"
        )
    chosen = series[0]
    if chosen.problem:
        raise UserInputError(f"cannot read the DICOM series {folder}: {chosen.problem}")
    others = [p.name for p in files if str(p) not in dicom]
    notes = [f"{r.source}: {r.reason}" for r in rejected]
    if others:
        notes.append(f"{folder}: left out {len(others)} file(s) that are not DICOM: {_names(others)}")
    return Series(chosen.uid, chosen.name, chosen.folder, chosen.files, notes=tuple(notes))


def group_series(files: list[str]) -> tuple[list[Series], list[Rejected]]:
    """Reads headers, groups by SeriesInstanceUID, keeps axial CT, explains everything else. A damaged or cut
    file may be a slice of any series in its folder: those series are not read (a slice would be missing)."""
    by_series: dict[str, list[tuple[str, object]]] = defaultdict(list)
    rejected = []
    damaged: dict[str, list[Rejected]] = defaultdict(list)
    for path in files:
        header, reason = read_header(path)
        if header is None:
            damaged[os.path.dirname(path)].append(Rejected(path, reason))
            continue
        by_series[str(header.SeriesInstanceUID)].append((path, header))
    series = []
    for uid, members in by_series.items():
        found, reasons = _series(uid, members)
        if found:  # a damaged neighbour is the cause to name, even when it also left a gap
            folders = {os.path.dirname(path) for path, _ in members}
            found = _with_damaged_neighbours(found, [r for f in sorted(folders) for r in damaged.get(f, [])])
        series += [found] if found else []
        rejected += reasons
    rejected += [r for found in damaged.values() for r in found]
    return sorted(series, key=lambda s: (s.folder, s.name)), rejected


def read_header(path: str) -> tuple[object | None, str]:
    """(header, '') or (None, why the file cannot be a slice): unreadable, incomplete or pixel data cut short."""
    import pydicom

    try:
        with open(path, "rb") as stream:
            raw = stream.read(132)[128:] != b"DICM"
            stream.seek(0)
            header = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=HEADER_TAGS, force=raw)
            pixel_bytes = os.fstat(stream.fileno()).st_size - stream.tell()
    except Exception as error:  # pydicom raises many types for truncated or foreign files
        return None, f"unreadable DICOM file ({type(error).__name__}: {error}); copy it again or remove it"
    if "SeriesInstanceUID" not in header or "SOPClassUID" not in header:
        return (
            None,
            "incomplete DICOM file (no series or SOP class UID: cut short?); copy it again or remove it",
        )
    missing = _missing_pixel_bytes(header, pixel_bytes)
    if missing:
        return None, f"DICOM file cut short: {missing} bytes of its pixel data are missing; copy it again"
    return header, ""


def _missing_pixel_bytes(header, available: int) -> int:
    """How many bytes of uncompressed pixel data are missing after the Pixel Data tag (0 when complete or when
    the data are compressed, whose length the header does not tell: the reader then reports the damage)."""
    if "Rows" not in header or "Columns" not in header:
        return 0
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        return 0
    implicit = syntax is None or syntax.is_implicit_VR
    frames = int(header.get("NumberOfFrames", 1) or 1)
    samples, bits = int(header.get("SamplesPerPixel", 1) or 1), int(header.get("BitsAllocated", 16) or 16)
    needed = (8 if implicit else 12) + int(header.Rows) * int(header.Columns) * samples * frames * bits // 8
    return max(0, needed - available)


def _with_damaged_neighbours(series: Series, damaged: list[Rejected]) -> Series:
    if not damaged:
        return series
    first = damaged[0]
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    problem = (
        f"{first.source}{more} in its folder is not readable: {first.reason}. It may be one of the series' "
        "slices, so the series is not read with a slice missing; copy the series again, or remove the file "
        "if it does not belong"
    )
    return Series(series.uid, series.name, series.folder, series.files, problem, series.notes)


def _series(uid: str, members: list[tuple[str, object]]) -> tuple[Series | None, list[Rejected]]:
    folder = os.path.commonpath([os.path.dirname(path) for path, _ in members])
    first = members[0][1]
    where = f"{folder} (series {first.get('SeriesNumber', '?')} '{first.get('SeriesDescription', '')}', {len(members)} files)"
    modality = str(first.get("Modality", "") or "unknown")
    if modality != "CT":
        return None, [Rejected(where, f"modality {modality}, not CT")]
    sop_class = str(first.get("SOPClassUID", ""))
    if sop_class != CT_IMAGE_STORAGE:
        return None, [
            Rejected(
                where, f"{SOP_CLASS_NAMES.get(sop_class, 'SOP class ' + sop_class)} objects, not CT images"
            )
        ]
    images = [(path, header) for path, header in members if not _is_localizer(header)]
    if not images:
        return None, [Rejected(where, "localizer (scout) images, not a CT volume")]
    notes = (
        [f"left out {len(members) - len(images)} localizer image(s) of the series"]
        if len(images) < len(members)
        else []
    )
    images, problem, left_out = _main_stack(images)
    notes += [left_out] if left_out else []
    if len(images) < 2 and not problem:
        return None, [Rejected(where, "a single CT image, not a volume")]
    if not problem:
        problem, images = _geometry(images)
    normal = _normal(images[0][1])
    if normal is not None and not problem and abs(normal[2]) < AXIAL_MIN_COSINE:
        return None, [Rejected(where, f"{_plane(normal)} images, not axial: pick the axial series")]
    files = tuple(path for path, _ in images)
    return Series(uid, series_name(first), folder, files, problem, tuple(notes)), [
        Rejected(where, n) for n in notes
    ]


def _main_stack(images: list[tuple[str, object]]) -> tuple[list[tuple[str, object]], str, str]:
    """(the images of one stack, problem, note on what was left out). A series may carry its coronal or sagittal
    localizer (GE does) or another small stack: the largest set of axial images of one orientation, size and
    pixel spacing is kept; two such sets of equal size are ambiguous and refused."""
    stacks: dict[tuple, list[tuple[str, object]]] = defaultdict(list)
    for path, header in images:
        stacks[_stack_key(header)].append((path, header))
    if len(stacks) == 1:
        return images, "", ""
    ranked = sorted(stacks.values(), key=len, reverse=True)
    axial = [stack for stack in ranked if _is_axial(stack[0][1])]
    described = "; ".join(_describe(stack) for stack in ranked)
    if not axial:
        return images, f"mixed geometry: no axial stack among {described}; export the axial series", ""
    if len(axial) > 1 and len(axial[1]) == len(axial[0]):
        return (
            images,
            f"mixed geometry: two axial stacks of {len(axial[0])} images ({described}); split the series",
            "",
        )
    kept = axial[0]
    others = [stack for stack in ranked if stack is not kept]
    note = (
        f"left out {sum(map(len, others))} image(s) that are not part of its axial stack of {len(kept)}: "
        + "; ".join(_describe(stack) for stack in others)
    )
    return kept, "", note


def _stack_key(header) -> tuple:
    orientation = tuple(np.round(np.asarray(header.get("ImageOrientationPatient", [0] * 6), float), 3))
    spacing = tuple(np.round(np.asarray(header.get("PixelSpacing", [0, 0]), float), 4))
    return orientation, int(header.get("Rows", 0)), int(header.get("Columns", 0)), spacing


def _is_axial(header) -> bool:
    normal = _normal(header)
    return normal is not None and abs(normal[2]) >= AXIAL_MIN_COSINE


def _describe(stack: list[tuple[str, object]]) -> str:
    header = stack[0][1]
    normal = _normal(header)
    plane = _plane(normal) if normal is not None else "unknown-plane"
    size = f"{header.get('Columns', '?')}x{header.get('Rows', '?')}"
    return f"{len(stack)} {plane} {size} ({_names([os.path.basename(p) for p, _ in stack])})"


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _is_localizer(header) -> bool:
    return "LOCALIZER" in [str(value).upper() for value in header.get("ImageType", [])]


def _geometry(images: list[tuple[str, object]]) -> tuple[str, list[tuple[str, object]]]:
    """(problem or '', images sorted along the normal) for one stack (one orientation, size, pixel spacing)."""
    normal = _normal(images[0][1])
    if normal is None or any("ImagePositionPatient" not in h for _, h in images):
        return "no ImageOrientationPatient/ImagePositionPatient: slice geometry unknown", images
    positions = np.array([np.dot(np.asarray(h.ImagePositionPatient, float), normal) for _, h in images])
    order = np.argsort(positions, kind="stable")
    images, positions = [images[i] for i in order], positions[order]
    steps = np.diff(positions)
    if (steps < 1e-3).any():
        return (
            f"mixed geometry: {int((steps < 1e-3).sum()) + 1} slices share a position (several acquisitions or "
            "duplicated files in one series)"
        ), images
    low, high, median = float(steps.min()), float(steps.max()), float(np.median(steps))
    if high - low > max(0.05, 0.05 * median):
        worst = int(np.argmax(np.abs(steps - median)))
        uneven = int((np.abs(steps - median) > max(0.05, 0.05 * median)).sum())
        return (
            f"slice spacing varies from {low:.2f} to {high:.2f} mm where the series steps {median:.2f} mm: "
            f"{uneven} uneven step(s), e.g. {steps[worst]:.2f} mm between {os.path.basename(images[worst][0])} "
            f"and {os.path.basename(images[worst + 1][0])} (missing slices?); a volume needs evenly spaced "
            "slices: copy the whole series again"
        ), images
    return "", images


def _normal(header) -> np.ndarray | None:
    values = header.get("ImageOrientationPatient")
    if values is None or len(values) != 6:
        return None
    row, column = np.asarray(values[:3], float), np.asarray(values[3:], float)
    normal = np.cross(row, column)
    length = np.linalg.norm(normal)
    return normal / length if length > 0 else None


def _plane(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def series_name(header) -> str:
    """PatientID_SeriesNumber_Description, reduced to characters safe in file names."""
    parts = [str(header.get(key, "") or "") for key in ("PatientID", "SeriesNumber", "SeriesDescription")]
    return safe_name("_".join(p for p in parts if p) or "series")


def safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return cleaned[:80] or "case"
