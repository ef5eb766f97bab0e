"""DICOM trees -> one candidate CT per series: axial CT images kept, localizers and non-CT objects skipped.

Only headers are read here (no pixels), so a large tree is sorted quickly; the geometry checks catch the series
SimpleITK would silently read wrong (mixed sizes or orientations, gaps, several acquisitions in one series).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class Rejected:
    source: str
    reason: str


def is_dicom_file(path: str | Path) -> bool:
    """Part-10 files carry 'DICM' after a 128-byte preamble (whatever their name)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def group_series(files: list[str]) -> tuple[list[Series], list[Rejected]]:
    """Reads headers, groups by SeriesInstanceUID, keeps axial CT, explains everything else."""
    import pydicom

    by_series: dict[str, list[tuple[str, object]]] = defaultdict(list)
    rejected = []
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except Exception as error:  # pydicom raises many types for truncated or foreign files
            rejected.append(Rejected(path, f"unreadable DICOM file ({type(error).__name__}: {error})"))
            continue
        if "SeriesInstanceUID" not in header or "SOPClassUID" not in header:
            rejected.append(Rejected(path, "incomplete DICOM file (no series or SOP class UID: cut short?)"))
            continue
        by_series[str(header.SeriesInstanceUID)].append((path, header))
    series = []
    for uid, members in by_series.items():
        found, reasons = _series(uid, members)
        series += [found] if found else []
        rejected += reasons
    return sorted(series, key=lambda s: (s.folder, s.name)), rejected


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
        [Rejected(where, f"{len(members) - len(images)} localizer image(s) left out of the series")]
        if len(images) < len(members)
        else []
    )
    if len(images) < 2:
        return None, [Rejected(where, "a single CT image, not a volume")]
    problem, files = _geometry(images)
    normal = _normal(images[0][1])
    if normal is not None and not problem and abs(normal[2]) < AXIAL_MIN_COSINE:
        return None, [Rejected(where, f"{_plane(normal)} images, not axial: pick the axial series")]
    return Series(uid, series_name(first), folder, tuple(files), problem), notes


def _is_localizer(header) -> bool:
    return "LOCALIZER" in [str(value).upper() for value in header.get("ImageType", [])]


def _geometry(images: list[tuple[str, object]]) -> tuple[str, list[str]]:
    """(problem or '', files sorted along the normal)."""
    shapes = {(int(h.get("Rows", 0)), int(h.get("Columns", 0))) for _, h in images}
    if len(shapes) > 1:
        sizes = ", ".join(f"{c}x{r}" for r, c in sorted(shapes))
        return f"mixed geometry: images of {len(shapes)} sizes ({sizes}) in one series", [
            p for p, _ in images
        ]
    orientations = {
        tuple(np.round(np.asarray(h.get("ImageOrientationPatient", [0] * 6), float), 3)) for _, h in images
    }
    if len(orientations) > 1:
        return f"mixed geometry: {len(orientations)} slice orientations in one series", [p for p, _ in images]
    spacings = {tuple(np.round(np.asarray(h.get("PixelSpacing", [0, 0]), float), 4)) for _, h in images}
    if len(spacings) > 1:
        return f"mixed geometry: {len(spacings)} pixel spacings in one series", [p for p, _ in images]
    normal = _normal(images[0][1])
    if normal is None or any("ImagePositionPatient" not in h for _, h in images):
        return "no ImageOrientationPatient/ImagePositionPatient: slice geometry unknown", [
            p for p, _ in images
        ]
    positions = np.array([np.dot(np.asarray(h.ImagePositionPatient, float), normal) for _, h in images])
    order = np.argsort(positions, kind="stable")
    files = [images[i][0] for i in order]
    steps = np.diff(positions[order])
    if (steps < 1e-3).any():
        return (
            f"mixed geometry: {int((steps < 1e-3).sum()) + 1} slices share a position (several acquisitions or "
            "duplicated files in one series)"
        ), files
    low, high, median = float(steps.min()), float(steps.max()), float(np.median(steps))
    if high - low > max(0.05, 0.05 * median):
        return (
            f"mixed geometry: slice spacing varies from {low:.2f} to {high:.2f} mm (missing slices?); "
            "a volume needs evenly spaced slices"
        ), files
    return "", files


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
