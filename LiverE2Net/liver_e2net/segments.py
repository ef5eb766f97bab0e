"""The two output segments: label values, names, colours and DICOM/SNOMED terminology (Slicer's format)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentInfo:
    label: int
    name: str
    color: tuple[float, float, float]  # RGB in [0, 1]
    terminology: str  # Slicer's TerminologyEntry tag value


SEGMENTS = (
    SegmentInfo(
        1,
        "Liver",
        (221 / 255, 130 / 255, 101 / 255),  # Slicer's GenericAnatomyColors "liver"
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
        "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^",
    ),
    SegmentInfo(
        2,
        "Liver tumor",
        (255 / 255, 181 / 255, 158 / 255),
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered Structure"
        "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^",
    ),
)
