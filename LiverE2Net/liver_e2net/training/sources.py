"""Where training cases come from: file pairs found in a dataset folder or JSON list, or arrays (Slicer).

Only finding and naming happen here, by the file-name rules of `protocol` (shared with the Slicer side); reading
and checking the volumes is `cases.read_case`'s job.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..protocol import (
    NNUNET_CHANNEL,
    NNUNET_IMAGES,
    NNUNET_LABELS,
    TRAINING_PAIRS,
    pair_flat_folder,
    pair_nnunet,
    volume_stem,
)

log = logging.getLogger("liver_e2net.training")


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
Unpaired = tuple[Path, str]  # a file that pairs with nothing, and why


def discover(data: str | Path) -> list[CasePaths]:
    """The cases of `data` (see find_pairs); a file that pairs with nothing is an error naming it."""
    cases, unpaired = find_pairs(data)
    if unpaired:
        raise UserInputError(
            f"{data}: these files cannot be paired: "
            + "; ".join(f"{path}: {problem}" for path, problem in unpaired)
        )
    return cases


def find_pairs(data: str | Path) -> tuple[list[CasePaths], list[Unpaired]]:
    """Cases of an nnU-Net style folder (imagesTr/ + labelsTr/), a folder of NAME_ct + NAME_label files, or a JSON
    list of {"image", "label"}; and the files that pair with nothing, each with the reason."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".json":
        return _from_json(data)
    if not data.exists():
        raise UserInputError(f"training data not found: {data}")
    if not data.is_dir():
        raise UserInputError(
            f'{data} is neither a folder nor a .json list of {{"image": ..., "label": ...}} entries; use '
            "--case CT LABEL for single pairs"
        )
    if (data / NNUNET_IMAGES).is_dir():
        pairs, unpaired = pair_nnunet(
            _entries(data / NNUNET_IMAGES, series=True), _entries(data / NNUNET_LABELS)
        )
        if not pairs and not unpaired:
            raise UserInputError(f"{data}: {NNUNET_IMAGES}/ holds no volumes")
    else:
        pairs, unpaired = pair_flat_folder(_entries(data))
        if not pairs and not unpaired:
            raise UserInputError(
                f"{data} holds no CT + label pairs: NAME_ct + NAME_label files (.nii.gz, .nrrd, .mha, or a "
                f".seg.nrrd label), {NNUNET_IMAGES}/ + {NNUNET_LABELS}/, or a {TRAINING_PAIRS}-style JSON list"
            )
    return [CasePaths(name, image, label) for name, image, label in pairs], unpaired


def _entries(folder: Path, series: bool = False) -> list[Path]:
    """The volume files of a folder (and, for images, sub-folders: DICOM series); others are logged and left."""
    entries = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (series and path.is_dir() and not path.name.startswith(".")) or (
            path.is_file() and volume_stem(path)
        ):
            entries.append(path)
        elif not path.name.startswith("."):
            log.info("ignoring %s: not a volume file", path)
    return entries


def _from_json(path: Path) -> tuple[list[CasePaths], list[Unpaired]]:
    """A list of entries, or an MSD dataset.json ({"training": [...]}); relative paths start at the file. Keys other
    than "image", "label" and "name" are ignored (the training panel's export records where each pair came from)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read the case list {path}: {error}") from error
    if isinstance(entries, dict):
        entries = entries.get("training")
    if not isinstance(entries, list) or not entries:
        raise UserInputError(f'{path} must hold a non-empty list of {{"image": ..., "label": ...}} entries')
    cases, missing = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise UserInputError(f'{path}: entry {index} needs "image" and "label" keys, got {entry!r}')
        image, label = (path.parent / entry[key] for key in ("image", "label"))
        absent = [file for file in (image, label) if not file.exists()]
        missing += [
            (file, f"entry {index} of {path.name} names it, but it does not exist") for file in absent
        ]
        if not absent:
            cases.append(CasePaths(str(entry.get("name") or case_name(image)), image, label))
    return cases, missing


def given_cases(
    data: list[str], pairs: list[tuple[str, str]], strict: bool = True
) -> tuple[list[CasePaths], list[Unpaired]]:
    """The cases of --data folders/lists and --case pairs, and the files of --data that found no partner (strict:
    such a file is an error, as for training)."""
    cases, unpaired = [], []
    for source in data:
        found, lonely = (discover(source), []) if strict else find_pairs(source)
        cases += found
        unpaired += lonely
    cases += [CasePaths(pair_name(Path(ct), Path(label)), Path(ct), Path(label)) for ct, label in pairs]
    return cases, unpaired


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
