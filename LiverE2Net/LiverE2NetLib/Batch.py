"""One cohort run of `liver_e2net segment-batch`: checked inputs (a folder, or studies of Slicer's DICOM database
written as a CSV list of their files), the child's command, its progress, and the cohort table it leaves.

The child does the work and the bookkeeping: one folder per case, `case.json` written last, `cohort.csv` at the
end, and a rerun reuses every finished case. So a cancelled batch is simply run again to resume it.
"""

from __future__ import annotations

import csv
import enum
import json
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import slicer
from liver_e2net.errors import UserInputError
from liver_e2net.protocol import (
    CASE_RECORD,
    COHORT_TABLE,
    OUTPUT_SUFFIXES,
    STAGE_CASE,
    STAGE_DONE,
    VOLUME_SUFFIXES,
    is_dicom_file,
)

from .ChildProcess import ProcessResult
from .Inputs import checkDependencies
from .Models import Accuracy, Device
from .Options import SegmenterOptions
from .Segments import SegmentationCancelled, SegmentationError

DICOM_LIST = "dicom_inputs.csv"  # the files of the chosen DICOM studies, one per line, for segment-batch


class BatchSource(enum.Enum):
    """Where the batch's CTs come from; `label()` is the panel's text."""

    Folder = "folder"
    DICOM = "dicom"

    def label(self) -> str:
        return {"folder": "Folder", "dicom": "DICOM database studies"}[self.value]


class BatchFormat(enum.Enum):
    """Label map format of each case; values are segment-batch's --format, `label()` the panel's text."""

    NIfTI = "nifti"
    NRRD = "nrrd"
    Segmentation = "seg.nrrd"
    MHA = "mha"
    DICOMSEG = "dicom-seg"

    def label(self) -> str:
        return {
            "nifti": "NIfTI (.nii.gz)",
            "nrrd": "NRRD (.nrrd)",
            "seg.nrrd": "Slicer segmentation (.seg.nrrd)",
            "mha": "MetaImage (.mha)",
            "dicom-seg": "DICOM SEG (DICOM input only)",
        }[self.value]


@dataclass(frozen=True)
class DicomStudy:
    uid: str
    label: str  # patient, date, description and series count, as the panel lists it


def dicomStudies(database) -> list[DicomStudy]:
    """Every study of a ctkDICOMDatabase (slicer.dicomDatabase), patient by patient."""
    if database is None:
        return []
    studies = []
    for patient in database.patients():
        name = (database.nameForPatient(patient) or "").replace("^", " ").strip() or "(no name)"
        for study in database.studiesForPatient(patient):
            date = database.fieldForStudy("StudyDate", study) or ""
            if re.fullmatch(r"\d{8}", date):
                date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
            series = len(database.seriesForStudy(study))
            parts = [name, date, database.descriptionForStudy(study) or "", f"{series} series"]
            studies.append(DicomStudy(study, " | ".join(part for part in parts if part)))
    return studies


def writeDicomList(database, studyUids: list[str], path: Path) -> None:
    """Writes every file of the studies' series as a CSV case list (column 'path'). segment-batch groups them
    into series and skips what is not axial CT, with the reason in the table."""
    files = [
        file
        for study in studyUids
        for series in database.seriesForStudy(study)
        for file in database.filesForSeries(series)
    ]
    if not files:
        raise UserInputError("The selected studies have no files in the DICOM database: import them again.")
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path"])
        writer.writerows([file] for file in files)


def outputFolderPath(folder: str | Path) -> Path:
    if not str(folder or "").strip():
        raise UserInputError("Choose an output folder for the batch.")
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise UserInputError(f"The output folder {path} is a file: choose a folder.")
    return path


def makeOutputFolder(path: Path) -> Path:
    """Creates the folder and proves it writable, as segment-batch would, but before any child starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserInputError(
            f"Cannot write to the output folder {path}: {error.strerror}. Choose a writable folder."
        ) from None
    return path


def checkInputFolder(folder: str | Path) -> Path:
    """An existing folder holding at least one CT volume file or DICOM file."""
    if not str(folder or "").strip():
        raise UserInputError(
            "Choose an input folder with CT volumes (NIfTI, NRRD, MHA) or DICOM files, or select DICOM studies."
        )
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserInputError(f"Input folder not found: {path}. Choose an existing folder.")
    if not _holdsCandidate(path):
        raise UserInputError(
            f"No CT found in {path}: it holds no NIfTI, NRRD or MHA volume and no DICOM file. Choose another folder."
        )
    return path


def _holdsCandidate(folder: Path) -> bool:
    """Stops at the first volume file or DICOM file, by segment-batch's own rules."""
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            lower = name.lower()
            if lower.endswith(VOLUME_SUFFIXES) and not lower.endswith(OUTPUT_SUFFIXES):
                return True
            if is_dicom_file(os.path.join(root, name)):
                return True
    return False


def finishedCases(outputFolder: Path) -> int:
    """Cases whose record says done: what a rerun will reuse (it checks them further)."""
    count = 0
    for record in Path(outputFolder).glob(f"*/{CASE_RECORD}"):
        try:
            count += json.loads(record.read_text(encoding="utf-8")).get("status") == "done"
        except (OSError, ValueError, AttributeError):
            continue
    return count


@dataclass(frozen=True)
class BatchOutcome:
    """What a finished batch left: the table and its counts (reused: finished by an earlier run)."""

    tablePath: Path
    counts: dict[str, int]
    reused: int
    seconds: float

    def summary(self) -> str:
        done, failed, skipped = (self.counts.get(status, 0) for status in ("done", "failed", "skipped"))
        parts = [f"{done} cases done" + (f" ({self.reused} from an earlier run)" if self.reused else "")]
        parts.append(f"{failed} failed")
        if skipped:
            parts.append(f"{skipped} inputs skipped")
        return ", ".join(parts)


def readOutcome(tablePath: Path, seconds: float) -> BatchOutcome:
    with open(tablePath, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    counts = Counter(row.get("status", "") for row in rows)
    return BatchOutcome(tablePath, dict(counts), sum(row.get("reused") == "yes" for row in rows), seconds)


@dataclass
class BatchJob:
    outputFolder: Path
    command: list[str]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def create(
        cls,
        cliCommand: list[str],
        outputFolder,
        inputFolder=None,
        studyUids=None,
        database=None,
        outputFormat: BatchFormat | str = BatchFormat.NIfTI,
        model=None,
        device: Device | str = Device.Auto,
        tumors: bool = True,
        accuracy: Accuracy | str = Accuracy.Fast,
    ) -> BatchJob:
        """Checks everything a user can get wrong before the child starts. `studyUids` (with `database`) replaces
        `inputFolder`. Raises UserInputError."""
        try:
            outputFormat = BatchFormat(outputFormat)
        except ValueError:
            raise UserInputError(f"Unknown format {outputFormat!r}: choose a format the panel offers.") from None
        options = SegmenterOptions.parse(model, device, accuracy, tumors)
        if studyUids is None:
            inputFolder = checkInputFolder(inputFolder)
        elif not studyUids:
            raise UserInputError("Select one or more studies in the DICOM database list.")
        elif database is None:
            raise UserInputError("Slicer's DICOM database is not available: open the DICOM module first.")
        output = outputFolderPath(outputFolder)
        if inputFolder is not None and output.resolve() == inputFolder.resolve():
            raise UserInputError("The output folder is the input folder: choose another output folder.")
        checkDependencies()
        makeOutputFolder(output)
        if studyUids is None:
            inputs = [str(inputFolder)]
        else:
            writeDicomList(database, list(studyUids), output / DICOM_LIST)
            inputs = [str(output / DICOM_LIST)]
        command = [*cliCommand, "segment-batch", *inputs, "-o", str(output), "--format", outputFormat.value,
                   *options.arguments()]
        return cls(output, command)

    @property
    def tablePath(self) -> Path:
        return self.outputFolder / COHORT_TABLE

    def finish(self, result: ProcessResult) -> BatchOutcome:
        """The table's counts, or SegmentationCancelled / SegmentationError with what is kept and what to do."""
        if result.cancelled:
            raise SegmentationCancelled(
                f"Batch cancelled: {finishedCases(self.outputFolder)} finished cases are kept in "
                f"{self.outputFolder}. Run it again to resume; finished cases are not recomputed."
            )
        if not result.succeeded:
            raise SegmentationError(result.failureMessage())
        try:
            return readOutcome(self.tablePath, time.monotonic() - self.started)
        except (OSError, csv.Error) as error:
            raise SegmentationError(
                f"The batch finished without a readable cohort table ({error})."
            ) from None


class BatchProgress:
    """The panel's view of segment-batch's JSON lines: the case in work, cases finished and failed, all from the
    records' fields (index, total, case, status), never from their message text."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self.caseIndex = (
            0  # 1-based, among the cases this run segments (finished ones are reused, not counted)
        )
        self.caseTotal = 0
        self.caseName = ""
        self.stage = ""
        self.detail = ""
        self.finished = 0
        self.failed: list[str] = []
        self.tablePath = ""

    def update(self, record: dict) -> None:
        self.fraction = float(record.get("fraction", self.fraction))
        self.stage = record.get("stage", "")
        if "index" in record and "total" in record:
            self.caseIndex, self.caseTotal = int(record["index"]), int(record["total"])
        if record.get("case"):
            self.caseName = str(record["case"])
        # The message is for people: the panel shows it without the "[2/5] case: " it repeats from the fields.
        prefix = f"[{self.caseIndex}/{self.caseTotal}] " if "index" in record else ""
        self.detail = str(record.get("message", "")).removeprefix(prefix).removeprefix(f"{self.caseName}: ")
        if self.stage == STAGE_CASE:
            self.finished = self.caseIndex
            if record.get("status") == "failed":
                self.failed.append(self.caseName)
        elif self.stage == STAGE_DONE:
            self.tablePath = str(record.get("table", ""))


def loadCohortTable(path: str | Path):
    """cohort.csv as a table node, read by Slicer's table storage node (what Slicer's table reader does). Loading
    the same file again refreshes its node instead of adding another."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"No cohort table at {path}: run the batch first.")
    scene = slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
        storage = node.GetStorageNode()
        if storage and storage.GetFileName() and Path(storage.GetFileName()).resolve() == path.resolve():
            if not storage.ReadData(node):
                raise SegmentationError(f"Cannot read the cohort table {path}.")
            return node
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{path.parent.name} cohort"))
    storage = scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise SegmentationError(f"Cannot read the cohort table {path}.")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node
