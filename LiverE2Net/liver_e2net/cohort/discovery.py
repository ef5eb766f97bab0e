"""Inputs of a batch -> named cases: volume files, folders (walked), CSV lists of paths and DICOM trees.

Discovery reads no pixels: what is wrong with a volume file shows when the case runs, and is recorded there, so
one bad file never stops the batch. The order and names are deterministic (a rerun finds the same cases).
"""

from __future__ import annotations

import csv
import fnmatch
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserInputError
from ..protocol import OUTPUT_SUFFIXES, VOLUME_SUFFIXES, is_dicom_file
from .dicom_tree import Rejected, group_series, safe_name

CSV_PATH_COLUMNS = ("path", "image", "ct", "input", "file")
CSV_NAME_COLUMNS = ("case", "name", "id", "case_id")


@dataclass(frozen=True)
class Case:
    """One CT to segment. `files`: the volume file, or the DICOM slices sorted along the slice normal.
    `problem`: known before reading (missing file, mixed DICOM geometry): the case fails with this message."""

    name: str
    source: str
    files: tuple[str, ...]
    series_uid: str = ""
    problem: str = ""
    notes: tuple[str, ...] = ()  # what reading leaves out of the series (a localizer): recorded in case.json

    @property
    def is_dicom(self) -> bool:
        return bool(self.series_uid)


@dataclass(frozen=True)
class Discovery:
    cases: tuple[Case, ...]
    skipped: tuple[Rejected, ...]  # DICOM series and files that are not CT volumes, with the reason
    ignored: tuple[str, ...]  # files in walked folders that are not CTs (README, JSON, .seg.nrrd, ...)
    notes: tuple[str, ...]  # renamed duplicates, repeated inputs


def discover(inputs: list[str], pattern: str = "*", exclude: Path | None = None) -> Discovery:
    """`pattern` filters volume file names found in folders; `exclude` (the output folder) is never walked."""
    volumes: list[tuple[str, str | None]] = []  # (path, name given in a CSV or None)
    dicom_files: list[str] = []
    ignored: list[str] = []
    problems: list[Case] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise UserInputError(f"input not found: {path}")
        if path.is_dir():
            found, dicom, other = walk_folder(path, pattern, exclude)
            volumes += [(p, None) for p in found]
            dicom_files += dicom
            ignored += other
        elif path.name.lower().endswith(".csv"):
            listed, missing = read_case_list(path)
            for entry, name in listed:
                if Path(entry).is_dir():
                    found, dicom, other = walk_folder(Path(entry), "*", exclude)
                    volumes += [(p, name) for p in found]
                    dicom_files += dicom
                    ignored += other
                elif is_dicom_file(entry):
                    dicom_files.append(entry)
                else:
                    volumes.append((entry, name))
            problems += missing
        elif is_dicom_file(path):
            dicom_files.append(str(path))
        else:
            volumes.append((str(path), None))
    notes = []
    unique_volumes = list(
        {os.path.realpath(path): (path, name) for path, name in reversed(volumes)}.values()
    )[::-1]
    if len(unique_volumes) < len(volumes):
        notes.append(
            f"{len(volumes) - len(unique_volumes)} input(s) listed more than once: each is segmented once, "
            "under its first name"
        )
    series, skipped = group_series(list(dict.fromkeys(dicom_files)))
    cases = [Case(name or volume_name(path), path, (path,)) for path, name in unique_volumes] + problems
    cases += [Case(s.name, s.folder, s.files, s.uid, s.problem, s.notes) for s in series]
    cases, renames = unique_names(cases)
    return Discovery(tuple(cases), tuple(skipped), tuple(ignored), tuple(notes + renames))


def walk_folder(folder: Path, pattern: str, exclude: Path | None) -> tuple[list[str], list[str], list[str]]:
    """(volume files, DICOM files, other files) under `folder`, sorted, hidden entries and `exclude` left out."""
    volumes, dicom, other = [], [], []
    skip = exclude.resolve() if exclude else None
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith(".") and (Path(root, f).resolve() != skip))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            lower = name.lower()
            if lower.endswith(VOLUME_SUFFIXES) and not lower.endswith(OUTPUT_SUFFIXES):
                if fnmatch.fnmatch(name, pattern):
                    volumes.append(path)
            elif is_dicom_file(path):
                dicom.append(path)
            else:
                other.append(path)
    return volumes, dicom, other


def read_case_list(path: Path) -> tuple[list[tuple[str, str | None]], list[Case]]:
    """CSV of paths (relative to the CSV's folder): a header naming a path column (path, image, ct, input, file)
    and optionally a name column (case, name, id), or no header and the path in the first column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            rows = [row for row in csv.reader(stream) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserInputError(f"cannot read the case list {path}: {error}") from error
    if not rows:
        raise UserInputError(f"the case list {path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    path_column = next((header.index(c) for c in CSV_PATH_COLUMNS if c in header), None)
    name_column = next((header.index(c) for c in CSV_NAME_COLUMNS if c in header), None)
    has_header = path_column is not None
    if has_header:
        rows = rows[1:]
    else:
        path_column, name_column = 0, None
    listed, missing = [], []
    for number, row in enumerate(rows, start=2 if has_header else 1):
        if path_column >= len(row) or not row[path_column].strip():
            raise UserInputError(f"{path}, line {number}: no path in column {path_column + 1}")
        entry = Path(row[path_column].strip()).expanduser()
        entry = entry if entry.is_absolute() else path.parent / entry
        name = (
            safe_name(row[name_column])
            if name_column is not None and name_column < len(row) and row[name_column].strip()
            else None
        )
        if entry.exists():
            listed.append((str(entry), name))
        else:
            missing.append(
                Case(
                    name or volume_name(entry),
                    str(entry),
                    (str(entry),),
                    problem=f"input not found: {entry} (listed in {path})",
                )
            )
    return listed, missing


def volume_name(path: str | Path) -> str:
    """case01_ct.nii.gz -> case01_ct."""
    name = Path(path).name
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return safe_name(name[: -len(suffix)])
    return safe_name(Path(name).stem)


def unique_names(cases: list[Case]) -> tuple[list[Case], list[str]]:
    """Gives every case its own output folder: clashing names (case-insensitively, for macOS and Windows disks)
    get their parent folder's name as a prefix, then a number; each rename is reported."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, case in enumerate(cases):
        groups[case.name.lower()].append(index)
    taken = {case.name.lower() for case in cases}
    renamed = list(cases)
    notes = []
    for indices in groups.values():
        if len(indices) < 2:
            continue
        changes = []
        for index in indices:
            case = cases[index]
            folder = Path(case.source) if case.is_dicom else Path(case.source).parent
            candidate = base = safe_name(f"{folder.name}_{case.name}")
            number = 2
            while candidate.lower() in taken:
                candidate, number = f"{base}_{number}", number + 1
            taken.add(candidate.lower())
            renamed[index] = replace(case, name=candidate)
            changes.append(f"{candidate} ({case.source})")
        notes.append(
            f"{len(indices)} inputs are named '{cases[indices[0]].name}': renamed to " + ", ".join(changes)
        )
    return renamed, notes
