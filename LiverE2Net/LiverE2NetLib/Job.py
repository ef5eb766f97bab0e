"""One segmentation run: checked inputs and a temporary folder in, the child's command, its result out."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import slicer
from liver_e2net.errors import UserInputError

from .ChildProcess import ProcessResult
from .Inputs import checkDependencies, checkInputVolume
from .Models import Accuracy, Device
from .Options import SegmenterOptions
from .Segments import SegmentationCancelled, SegmentationError, importResult, writeVolume


@dataclass
class SegmentationJob:
    volumeNode: object
    outputNode: object  # None: a new segmentation node
    tumors: bool
    smoothing: float
    probabilities: bool
    folder: Path
    command: list[str]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def create(cls, cliCommand: list[str], volumeNode, model=None, device: Device | str = Device.Auto,
               accuracy: Accuracy | str = Accuracy.Fast, tumors: bool = True, smoothing: float = 0.5,
               probabilities: bool = False, outputNode=None, removeFalsePositives: bool = True) -> SegmentationJob:
        """Checks everything a user can get wrong, then writes the CT for the child. Raises UserInputError."""
        checkInputVolume(volumeNode)
        checkDependencies()
        options = SegmenterOptions.parse(model, device, accuracy, tumors, removeFalsePositives)
        if not 0.0 <= smoothing <= 1.0:
            raise UserInputError(f"Surface smoothing {smoothing} is outside 0..1.")
        folder = Path(tempfile.mkdtemp(prefix="LiverE2Net-"))
        job = cls(volumeNode, outputNode, tumors, smoothing, probabilities, folder, [])
        job.command = [*cliCommand, "segment", str(job.inputPath), "-o", str(job.labelPath),
                       "--report", str(job.reportPath), *options.arguments()]
        if probabilities:
            job.command += ["--probabilities", str(job.probabilitiesPath)]
        try:
            writeVolume(volumeNode, job.inputPath)
        except SegmentationError:
            job.cleanup()
            raise
        return job

    @property
    def inputPath(self) -> Path:
        return self.folder / "input.nrrd"

    @property
    def labelPath(self) -> Path:
        return self.folder / "label.nrrd"

    @property
    def reportPath(self) -> Path:
        return self.folder / "report.json"

    @property
    def probabilitiesPath(self) -> Path:
        return self.folder / "probabilities.nrrd"

    def finish(self, result: ProcessResult):
        """The segmentation node, or the child's own error message raised as SegmentationError."""
        if result.cancelled:
            raise SegmentationCancelled("Segmentation cancelled: the scene is unchanged.")
        if not result.succeeded:
            raise SegmentationError(result.failureMessage())
        scene = slicer.mrmlScene
        if not scene.IsNodePresent(self.volumeNode):
            raise SegmentationError("The CT volume was removed while it was being segmented: nothing was added.")
        outputNode = self.outputNode if self.outputNode and scene.IsNodePresent(self.outputNode) else None
        try:
            report = json.loads(self.reportPath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SegmentationError(f"The segmentation finished without a readable report ({error}).") from None
        report.setdefault("seconds", {})["wall"] = round(time.monotonic() - self.started, 2)  # start-up included
        return importResult(self.labelPath, self.volumeNode, outputNode, report, self.tumors, self.smoothing,
                            self.probabilitiesPath if self.probabilities else None)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
