"""Where training cases come from: file pairs found in a dataset folder or JSON list, or arrays (Slicer).

Only pairing and naming happen here; reading and checking the volumes is `cases.read_case`'s job.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..protocol import OUTPUT_SUFFIXES
from ..protocol import VOLUME_SUFFIXES as CT_SUFFIXES

log = logging.getLogger("liver_e2net.training")

VOLUME_SUFFIXES = OUTPUT_SUFFIXES + CT_SUFFIXES  # a label may be a Slicer .seg.nrrd; longest suffix first
NNUNET_CHANNEL = "_0000"  # nnU-Net names the (single) image channel NAME_0000.ext


@dataclass(frozen=True)
class CasePaths:
    """A CT file or DICOM series folder with its label file (label map, or Slicer .seg.nrrd)."""

    name: str
    image: Path
    label: Path


@dataclass(frozen=True, eq=False)
class TrainingCase:
    """A case given as arrays, as the Slicer training module has them. Same grid for CT and label."""

    name: str
    ct: np.ndarray  # [z, y, x] HU
    label: np.ndarray  # [z, y, x] {0 background, 1 liver, 2 tumor}
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(
        default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    )  # row-major, LPS


CaseSource = CasePaths | TrainingCase


def volume_stem(path: Path) -> str | None:
    """The case part of a volume file name (suffix removed), or None for files that are not volumes."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def discover(data: str | Path) -> list[CasePaths]:
    """Cases of an nnU-Net style folder (imagesTr/ + labelsTr/) or of a JSON list of {"image", "label"}."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".json":
        return _from_json(data)
    if data.is_dir() and (data / "imagesTr").is_dir() and (data / "labelsTr").is_dir():
        return _from_folder(data)
    if not data.exists():
        raise UserInputError(f"training data not found: {data}")
    raise UserInputError(
        f"{data} is neither a folder holding imagesTr/ and labelsTr/ nor a .json list of "
        '{"image": ..., "label": ...} entries; use --case CT LABEL for single pairs'
    )


def _from_folder(folder: Path) -> list[CasePaths]:
    images: dict[str, Path] = {}
    for path in sorted((folder / "imagesTr").iterdir()):
        if path.name.startswith("."):
            continue
        stem = path.name if path.is_dir() else volume_stem(path)  # a sub-folder is a DICOM series
        if stem is None:
            log.info("ignoring %s: not a volume file", path)
            continue
        images[stem[: -len(NNUNET_CHANNEL)] if stem.endswith(NNUNET_CHANNEL) else stem] = path
    labels: dict[str, Path] = {}
    for path in sorted((folder / "labelsTr").iterdir()):
        stem = volume_stem(path) if path.is_file() and not path.name.startswith(".") else None
        if stem is None:
            log.info("ignoring %s: not a label file", path)
            continue
        labels[stem] = path
    unpaired = [str(images[n]) for n in sorted(set(images) - set(labels))]
    unpaired += [str(labels[n]) for n in sorted(set(labels) - set(images))]
    if unpaired:
        raise UserInputError(
            f"{folder}: these files have no partner of the same case name in imagesTr/ or "
            f"labelsTr/: {', '.join(unpaired)} (images are NAME.ext or NAME_0000.ext, labels NAME.ext)"
        )
    if not images:
        raise UserInputError(f"{folder}: imagesTr/ holds no volumes")
    return [CasePaths(name, images[name], labels[name]) for name in sorted(images)]


def _from_json(path: Path) -> list[CasePaths]:
    """A list of entries, or an MSD dataset.json ({"training": [...]}); relative paths start at the file."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read the case list {path}: {error}") from error
    if isinstance(entries, dict):
        entries = entries.get("training")
    if not isinstance(entries, list) or not entries:
        raise UserInputError(f'{path} must hold a non-empty list of {{"image": ..., "label": ...}} entries')
    cases = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise UserInputError(f'{path}: entry {index} needs "image" and "label" keys, got {entry!r}')
        image, label = (path.parent / entry[key] for key in ("image", "label"))
        for file in (image, label):
            if not file.exists():
                raise UserInputError(f"{path}: entry {index} names {file}, which does not exist")
        cases.append(CasePaths(str(entry.get("name") or case_name(image)), image, label))
    return cases


def case_name(image: Path) -> str:
    stem = image.name if image.is_dir() else (volume_stem(image) or image.stem)
    return stem[: -len(NNUNET_CHANNEL)] if stem.endswith(NNUNET_CHANNEL) else stem


def pair_name(image: Path, label: Path) -> str:
    """A case name for a --case pair: the common start of both names ('case02_ct', 'case02_label' -> 'case02')."""
    image_stem = case_name(image)
    label_stem = label.name if label.is_dir() else (volume_stem(label) or label.stem)
    common = os.path.commonprefix([image_stem, label_stem]).rstrip("_-. ")
    return common or image_stem


def check_unique(sources: list[CaseSource]) -> None:
    names = [source.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserInputError(
            f"case names must be unique, these occur more than once: {', '.join(duplicates)}"
        )


def split_cases(
    names: list[str], val_cases: tuple[str, ...], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(training, validation) names; the split is by case, so no slice of a validation case is trained on."""
    if len(names) < 2:
        raise UserInputError(
            f"{len(names)} case given: at least 2 are needed, one for training and one for "
            "validation (the split is by case, never by slice)"
        )
    if val_cases:
        unknown = sorted(set(val_cases) - set(names))
        if unknown:
            raise UserInputError(
                f"--val-cases {', '.join(unknown)}: no such case; cases are {', '.join(names)}"
            )
        validation = [name for name in names if name in val_cases]
    else:
        count = max(1, round(len(names) * val_fraction))
        order = np.random.default_rng(seed).permutation(sorted(names))
        validation = sorted(str(name) for name in order[:count])
    training = [name for name in names if name not in validation]
    if not training:
        raise UserInputError("every case is a validation case; leave at least one for training")
    return training, validation
