"""One training run of `liver_e2net train` in a child process: its command, live state, stop, and the outcome.

The child writes everything worth keeping into the run folder (best.pt, last.pt, trainer_state.pt, metrics.jsonl,
train.log); this side only reads it, so a crash of either process loses no trained epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from liver_e2net import protocol
from liver_e2net.errors import UserInputError
from liver_e2net.protocol import BEST_MODEL, METRICS, TRAINER_STATE
from LiverE2NetLib.ChildProcess import ProcessResult, QtProcess, childEnvironment, pythonExecutable
from LiverE2NetLib.Models import Device

RUNNING, STOPPING, FINISHED, STOPPED, FAILED = "running", "stopping", "finished", "stopped", "failed"
BEST, STATE, CONSOLE_LOG = BEST_MODEL, TRAINER_STATE, "console.log"  # the child writes all but console.log
DATA_FOLDER = "trainingData"
STOP_GRACE_MS = 120_000  # a stop waits for the current step (and its checkpoint); then the process tree is killed
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
OUT_OF_MEMORY = ("CUDA out of memory", "OutOfMemoryError", "CUDA error: out of memory")


@dataclass(frozen=True)
class TrainingSettings:
    """The panel's choices. `runFolder` = outputFolder / modelName holds the run; threads/cache/steps serve tests."""

    modelName: str
    outputFolder: Path
    fineTune: bool = True  # start from the bundled model, else from scratch with `config`
    config: str = "lite"
    epochs: int = 100
    validationShare: float = 0.2
    device: Device = Device.Auto
    batchSize: int = 8
    stepsPerEpoch: int | None = None
    threads: int | None = None
    cacheFolder: Path | None = None

    @property
    def runFolder(self) -> Path:
        return Path(self.outputFolder) / self.modelName

    def check(self) -> None:
        if not MODEL_NAME.fullmatch(self.modelName or ""):
            raise UserInputError(f"Model name {self.modelName!r}: use letters, digits, '-', '_' and '.', starting "
                                 "with a letter or digit.")
        if not str(self.outputFolder or "").strip():
            raise UserInputError("Choose an output folder for the model.")
        if self.epochs < 1 or self.batchSize < 1:
            raise UserInputError("Epochs and batch size must be at least 1.")
        if not 0 < self.validationShare < 1:
            raise UserInputError(f"Validation share {self.validationShare:g}: choose a value between 0 and 1.")


def bundledModel() -> Path | None:
    path = protocol.default_model_path()
    return path if path and path.is_file() else None


def cliCommand() -> list[str]:
    """`liver_e2net` run by Slicer's Python (tests put a scripted stand-in child here)."""
    return [pythonExecutable(), "-m", "liver_e2net"]


def trainCommand(cli: list[str], settings: TrainingSettings, pairList: Path) -> list[str]:
    """A new run on the pairs of `pairList`, the JSON list the export writes (protocol.TRAINING_PAIRS)."""
    command = [*cli, "train", "--data", str(pairList),
               "-o", str(settings.runFolder), "--epochs", str(settings.epochs),
               "--val-fraction", str(settings.validationShare), "--batch-size", str(settings.batchSize)]
    if settings.fineTune:
        model = bundledModel()
        if model is None:
            raise UserInputError("No bundled model to fine-tune: choose 'from scratch'.")
        command += ["--init", str(model)]
    else:
        command += ["--config", settings.config]
    if settings.stepsPerEpoch:
        command += ["--steps-per-epoch", str(settings.stepsPerEpoch)]
    return command + _runtimeArguments(settings)


def resumeCommand(cli: list[str], settings: TrainingSettings) -> list[str]:
    """Only runtime options and the epoch cap: the run keeps its own training options."""
    return [*cli, "train", "--resume", str(settings.runFolder),
            "--epochs", str(settings.epochs)] + _runtimeArguments(settings)


def _runtimeArguments(settings: TrainingSettings) -> list[str]:
    arguments = ["--device", Device(settings.device).value, "--progress", "jsonl"]
    if settings.threads:
        arguments += ["--threads", str(settings.threads)]
    if settings.cacheFolder:
        arguments += ["--cache", str(settings.cacheFolder)]
    return arguments


def canResume(runFolder: Path) -> bool:
    return (Path(runFolder) / STATE).is_file()


def readHistory(runFolder: Path) -> list[dict]:
    """One record per finished epoch (stage, epoch, train_loss, val_loss, val_dice_liver, val_dice_tumor)."""
    path = Path(runFolder) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the child is writing this line right now
    return records


def childProcessIds(pid: int) -> list[int]:
    table = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True, check=False)
    rows = (row.split() for row in table.stdout.splitlines())
    return [int(fields[0]) for fields in rows if len(fields) == 2 and int(fields[1]) == pid]


class TrainingProcess(QtProcess):
    """The segmentation module's QProcess runner plus a graceful stop: SIGINT makes the trainer finish the current
    step and write last.pt. PythonSlicer is a launcher, so the signal goes to the Python it started."""

    def interrupt(self) -> bool:
        """False where a signal cannot be sent (Windows, or no child yet): the caller then kills the tree."""
        pid = self.processId()
        if os.name == "nt" or pid <= 0:
            return False
        launcher = Path(self.program()).name.startswith("PythonSlicer")
        for target in (childProcessIds(pid) if launcher else []) or [pid]:
            try:
                os.kill(target, signal.SIGINT)
            except ProcessLookupError:
                pass
        return True


class TrainingRun:
    """The handle `startTraining` returns: live state for the panel, `stop()`, and the outcome when finished."""

    def __init__(self, command: list[str], settings: TrainingSettings, onUpdate: Callable | None = None,
                 onFinished: Callable | None = None, processFactory=TrainingProcess, register: Callable | None = None):
        self.command, self.settings = command, settings
        self.onUpdate, self.onFinished, self.register = onUpdate, onFinished, register
        self.process = processFactory()
        self.state = RUNNING
        self.record: dict = {}  # the last progress line
        self.history: list[dict] = readHistory(settings.runFolder)
        self.message = "Starting..."
        self.modelPath: Path | None = None
        self.result: ProcessResult | None = None
        self.started = time.monotonic()
        self._quitLoop = None  # set while waitForFinished runs its event loop

    @property
    def runFolder(self) -> Path:
        return self.settings.runFolder

    @property
    def fraction(self) -> float:
        return 1.0 if self.state == FINISHED else float(self.record.get("fraction", 0.0))

    def start(self) -> TrainingRun:
        self.process.start(self.command, childEnvironment(), self._onProgress, self._onProcessFinished)
        return self

    def isRunning(self) -> bool:
        return self.state in (RUNNING, STOPPING)

    def stop(self) -> None:
        """Asks the trainer to stop after the current step; it keeps best.pt and writes last.pt for Resume."""
        if self.state != RUNNING:
            return
        self.state, self.message = STOPPING, "Stopping after the current step..."
        if self.process.interrupt():
            import qt

            qt.QTimer.singleShot(STOP_GRACE_MS, self._stopTimedOut)
        else:
            self._kill()
        self._notify()

    def waitForFinished(self, timeoutSeconds: float = 600.0) -> bool:
        """For scripts and self-tests (the panel never waits): a local event loop until the run ends."""
        import qt

        if self.isRunning():
            loop = qt.QEventLoop()
            timer = qt.QTimer()
            timer.setSingleShot(True)
            timer.timeout.connect(loop.quit)
            timer.start(int(timeoutSeconds * 1000))
            self._quitLoop = loop.quit
            if self.isRunning():
                loop.exec()
            self._quitLoop = None
        return not self.isRunning()

    # -- child events ---------------------------------------------------------------------------------------------

    def _onProgress(self, record: dict) -> None:
        if record.get("stage") in ("error", "done"):
            return  # the outcome is told once, when the process has ended
        self.record = record
        if self.state == RUNNING:
            self.message = record.get("message", "")
        self.history = readHistory(self.runFolder)  # one short line per epoch: cheap to re-read
        self._notify()

    def _stopTimedOut(self) -> None:
        if self.state == STOPPING:
            self._kill()

    def _kill(self) -> None:
        """The process tree goes at once; best.pt, last.pt and the state of the last finished epoch stay."""
        if self.process.processId() > 0:
            self.process.cancel()

    def _onProcessFinished(self, result: ProcessResult) -> None:
        self.result = result
        self.history = readHistory(self.runFolder)
        self._saveConsoleLog(result)
        if result.exitCode == 0 and not result.cancelled:
            self._finish()  # also when a stop came too late to matter
        elif self.state == STOPPING:
            self.state = STOPPED
            self.message = "Stopped. " + self.keptMessage()
        else:
            self.state = FAILED
            self.message = f"{explainFailure(result, self.settings.batchSize)} {self.keptMessage()}".strip()
        self._notify()
        if self._quitLoop:
            self._quitLoop()
        if self.onFinished:
            self.onFinished(self)

    def _finish(self) -> None:
        self.state = FINISHED
        best = self.runFolder / BEST
        try:
            self.modelPath = self.register(best, self.settings.modelName) if self.register else best
        except (UserInputError, OSError) as error:
            self.message = f"Trained, but the model could not be registered ({error}); it is in {best}."
            return
        dice = (self.history[-1] if self.history else {})
        self.message = (f"Done: model '{self.settings.modelName}' (validation Dice liver "
                        f"{_fmt(dice.get('val_dice_liver'))}, tumor {_fmt(dice.get('val_dice_tumor'))}) "
                        "is ready in the Liver E2Net module.")

    def keptMessage(self) -> str:
        """What survived a stop or failure, and how to go on."""
        parts = []
        if (self.runFolder / BEST).is_file():
            parts.append(f"The best model so far is kept in {self.runFolder / BEST}.")
        if canResume(self.runFolder):
            parts.append("Press Resume to continue from the last saved step.")
        else:
            parts.append("Nothing was trained yet: start again.")
        return " ".join(parts)

    def _saveConsoleLog(self, result: ProcessResult) -> None:
        """The child's stderr (tracebacks included) beside train.log, so a crash can be understood later."""
        try:
            self.runFolder.mkdir(parents=True, exist_ok=True)
            with open(self.runFolder / CONSOLE_LOG, "a", encoding="utf-8") as log:
                log.write(f"$ {' '.join(self.command)}\n{result.stderr}\n[exit code {result.exitCode}, "
                          f"{time.monotonic() - self.started:.0f} s]\n\n")
        except OSError:
            pass  # an unwritable run folder is reported by the child itself

    def _notify(self) -> None:
        if self.onUpdate:
            self.onUpdate(self)


def explainFailure(result: ProcessResult, batchSize: int) -> str:
    if any(marker in result.stderr for marker in OUT_OF_MEMORY):
        smaller = max(1, batchSize // 2)
        return (f"The GPU ran out of memory. Lower the batch size (now {batchSize}; try {smaller}), choose the lite "
                "config, or train on the CPU.")
    if result.errorMessage:
        return result.errorMessage[:1].upper() + result.errorMessage[1:]
    if result.exitCode is None:
        return ("The training process stopped unexpectedly (it crashed, or was killed, e.g. by the system when "
                "memory ran out).")
    return f"Training failed: {result.failureMessage()}"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
