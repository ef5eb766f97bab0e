"""DICOM Segmentation objects (highdicom) for label maps of DICOM CT series, for PACS and Slicer's DICOM module.

A SEG must reference the CT images it was drawn on, so it is written only for DICOM input. Segments: 1 "Liver"
(the whole organ, tumors included, as the report's liver volume and the liver STL) and 2 "Liver tumor"; they
overlap, which a BINARY SEG allows. Their codes come from the same terminology entries as the .seg.nrrd output
(segments.py), so both files name the segments alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import UserInputError
from .extras import require
from .io import atomic_output
from .segments import SEGMENTS, SegmentInfo

log = logging.getLogger("liver_e2net")


def terminology_codes(entry: str) -> dict[str, tuple[str, str, str] | None]:
    """Slicer's TerminologyEntry string -> (code value, scheme, meaning) for category, type and anatomic region."""
    fields = entry.split("~")
    if len(fields) < 7:
        raise ValueError(f"not a Slicer terminology entry: {entry!r}")

    def code(text: str) -> tuple[str, str, str] | None:
        scheme, value, meaning = (text.split("^") + ["", "", ""])[:3]
        return (value, scheme, meaning) if value else None

    return {"category": code(fields[1]), "type": code(fields[2]), "region": code(fields[5])}


def segment_descriptions(model_version: str, segments: Sequence[SegmentInfo] = SEGMENTS) -> list:
    """One highdicom SegmentDescription per segment: standard codes, colour, AI algorithm identification."""
    hd = require("highdicom", "DICOM SEG output (--format dicom-seg)")
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="Liver E2Net", family=codes.cid7162.ArtificialIntelligence, version=model_version[:64]
    )
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        terms = terminology_codes(segment.terminology)
        region = terms["region"]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.name,
                segmented_property_category=hd.sr.CodedConcept(*terms["category"]),
                segmented_property_type=hd.sr.CodedConcept(*terms["type"]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[hd.sr.CodedConcept(*region)] if region else None,
                display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in segment.color)),
            )
        )
    return descriptions


def segment_masks(label: np.ndarray) -> np.ndarray:
    """[z, y, x] label map -> [z, y, x, 2] bool: liver (label >= 1, tumors included) and tumor (label == 2)."""
    return np.stack([label >= 1, label == 2], axis=-1)


def write_dicom_seg(
    label: np.ndarray,
    source_files: Sequence[str],
    path: str | Path,
    model_version: str,
    warnings: list[str] | None = None,
) -> Path:
    """`label` [z, y, x] on the grid of the series read from `source_files` in this order (slice k = file k).
    What the SEG had to make up (a FrameOfReferenceUID) is appended to `warnings`, for the case's report."""
    import pydicom

    hd = require("highdicom", "DICOM SEG output (--format dicom-seg)")

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute it copies at INFO
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    if label.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise UserInputError(
            f"label map {label.shape} does not match the {len(sources)} DICOM images "
            f"of {sources[0].Rows}x{sources[0].Columns} it should reference"
        )
    note = _ensure_frame_of_reference(sources, Path(source_files[0]).parent)
    if note and warnings is not None:
        warnings.append(note)
    masks = segment_masks(label)
    present = [i for i in range(masks.shape[-1]) if masks[..., i].any()] or [0]  # an empty SEG keeps 'Liver'
    try:
        segmentation = _segmentation(hd, sources, label, masks, present, model_version)
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # highdicom's refusals of the sources
        raise UserInputError(
            f"cannot make a DICOM SEG for the series in {Path(source_files[0]).parent}: {error}; "
            "write the label map in another format (nifti, nrrd, seg.nrrd)"
        ) from error
    with atomic_output(path, suffix=".dcm") as temporary:
        segmentation.save_as(temporary)
    return Path(path)


def _ensure_frame_of_reference(sources: list, folder: Path) -> str:
    """Older exports (3D-IRCADb among them) have no FrameOfReferenceUID, which a SEG must carry: the series gets
    a new one (in memory only), shared by the SEG; viewers match the SEG to the CT by the referenced image UIDs."""
    import pydicom

    if all("FrameOfReferenceUID" in source for source in sources):
        return ""
    uid = pydicom.uid.generate_uid()
    for source in sources:
        source.FrameOfReferenceUID = source.get("FrameOfReferenceUID") or uid
    note = (
        f"the DICOM series in {folder} has no FrameOfReferenceUID (an older export); "
        f"the DICOM SEG was given a new one, {uid}"
    )
    log.warning("warning: %s", note)
    return note


def _segmentation(
    hd, sources: list, label: np.ndarray, masks: np.ndarray, present: list[int], model_version: str
):
    series_number = int(sources[0].get("SeriesNumber", 0) or 0) + 1000
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks[..., present],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_descriptions(model_version)[i] for i in present],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Liver E2Net",
        manufacturer_model_name="Liver E2Net",
        software_versions=f"liver-e2net {__version__}",
        device_serial_number=model_version[:64] or "unknown",
        content_label="LIVER_E2NET",
        content_description="Liver and liver tumor segmentation (research use only)",
        series_description="Liver E2Net segmentation",
        omit_empty_frames=bool(label.any()),
    )
