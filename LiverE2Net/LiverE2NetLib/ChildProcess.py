"""Run `liver_e2net segment` in a child process: JSON progress lines, the child's own error message, and a
cancel that kills the whole process tree (PythonSlicer is a launcher that starts the real Python as its child).

Two runners share one parser and one result type: `BlockingProcess` (subprocess, for the synchronous Logic API
and self-tests) and `QtProcess` (qt.QProcess, signals drive callbacks in the GUI thread, Slicer stays responsive).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ProgressCallback = Callable[[dict], None]

# The folder holding `liver_e2net/`: put on the child's PYTHONPATH so it imports the package installed beside
# the module, whatever Slicer's own path is.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def pythonExecutable() -> str:
    """Slicer's Python launcher when running in Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def childEnvironment() -> dict[str, str]:
    environment = dict(os.environ)
    paths = [str(PACKAGE_PARENT), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


class ProgressParser:
    """Splits stdout into lines; keeps the JSON progress records and the child's error message."""

    def __init__(self):
        self._pending = ""
        self.errorMessage = ""

    def feed(self, text: str) -> list[dict]:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        records = []
        for line in lines:
            record = self._parse(line.strip())
            if record is None:
                continue
            if record["stage"] == "error":
                self.errorMessage = record.get("message", "")
            records.append(record)
        return records

    @staticmethod
    def _parse(line: str) -> dict | None:
        if not line.startswith("{"):
            if line:
                logging.info("liver_e2net: %s", line)
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logging.info("liver_e2net: %s", line)
            return None
        return record if isinstance(record, dict) and "stage" in record else None


@dataclass
class ProcessResult:
    exitCode: int | None  # None when the child did not exit normally (killed, crashed, failed to start)
    cancelled: bool = False
    errorMessage: str = ""  # from the child's {"stage": "error"} line
    stderr: str = ""

    @property
    def succeeded(self) -> bool:
        return self.exitCode == 0 and not self.cancelled

    def failureMessage(self) -> str:
        """The child's own words: its error line, else the last line of its stderr (not the whole traceback)."""
        if self.errorMessage:
            return self.errorMessage
        lastLines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        if lastLines:
            return lastLines[-1]
        if self.exitCode is None:
            return "the segmentation process stopped unexpectedly (it crashed or was killed)"
        return f"the segmentation process failed with exit code {self.exitCode}"


def killProcessTree(pid: int) -> None:
    """Kill `pid` and all its descendants. Without psutil (Slicer does not bundle it): taskkill on Windows,
    else the parent-child table from `ps`, collected before anything is killed so no orphan escapes."""
    if pid <= 0:
        return  # a process still starting has no id yet; 0 or -1 would address our own process group
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    table = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True, check=False)
    children: dict[int, list[int]] = {}
    for row in table.stdout.split("\n"):
        fields = row.split()
        if len(fields) == 2:
            children.setdefault(int(fields[1]), []).append(int(fields[0]))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


class BlockingProcess:
    """subprocess.Popen; returns when the child exits or `isCancelled()` turns true (checked every `pollSeconds`)."""

    def __init__(self, pollSeconds: float = 0.1):
        self.pollSeconds = pollSeconds

    def run(self, command: list[str], environment: dict[str, str], onProgress: ProgressCallback | None = None,
            isCancelled: Callable[[], bool] = lambda: False) -> ProcessResult:
        parser = ProgressParser()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderrFile:
            try:
                process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=stderrFile,
                                           text=True, encoding="utf-8", errors="replace", bufsize=1)
            except OSError as error:
                return ProcessResult(None, errorMessage=f"cannot start {command[0]}: {error.strerror}")
            lines: queue.Queue[str | None] = queue.Queue()
            reader = threading.Thread(target=self._readLines, args=(process.stdout, lines), daemon=True)
            reader.start()
            cancelled = False
            while True:
                if not cancelled and isCancelled():
                    killProcessTree(process.pid)
                    cancelled = True
                try:
                    line = lines.get(timeout=self.pollSeconds)
                except queue.Empty:
                    continue
                if line is None:
                    break
                for record in parser.feed(line):
                    if onProgress and not cancelled:
                        onProgress(record)
            process.wait()
            reader.join()
            stderrFile.seek(0)
            stderr = stderrFile.read()
        exitCode = process.returncode if process.returncode >= 0 else None
        return ProcessResult(exitCode, cancelled, parser.errorMessage, stderr)

    @staticmethod
    def _readLines(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)


class QtProcess:
    """qt.QProcess: nothing blocks; `onProgress(record)` and `onFinished(ProcessResult)` run in the GUI thread."""

    def __init__(self):
        import qt

        self._qt = qt
        self._process = None
        self._parser = ProgressParser()
        self._stderr: list[str] = []
        self._cancelled = False
        self._onProgress: ProgressCallback | None = None
        self._onFinished: Callable[[ProcessResult], None] | None = None

    def start(self, command: list[str], environment: dict[str, str], onProgress: ProgressCallback | None,
              onFinished: Callable[[ProcessResult], None]) -> None:
        qt = self._qt
        self._onProgress, self._onFinished = onProgress, onFinished
        process = qt.QProcess()
        processEnvironment = qt.QProcessEnvironment()
        for key, value in environment.items():
            processEnvironment.insert(key, value)
        process.setProcessEnvironment(processEnvironment)
        process.readyReadStandardOutput.connect(self._readStdout)
        process.readyReadStandardError.connect(self._readStderr)
        process.finished.connect(self._finish)
        process.errorOccurred.connect(self._failedToStart)
        self._process = process
        process.start(command[0], command[1:])

    def isRunning(self) -> bool:
        return self._process is not None and self._process.state() != self._qt.QProcess.NotRunning

    def processId(self) -> int:
        """The child's id; 0 unless it runs (a signal to pid 0 would reach Slicer's own process group). A child
        still starting is waited for (milliseconds), so a Stop clicked right after Start reaches it."""
        if not self.isRunning():
            return 0
        if self._process.state() == self._qt.QProcess.Starting:
            self._process.waitForStarted(5000)
        return int(self._process.processId())

    def program(self) -> str:
        """The executable started (PythonSlicer is a launcher: its Python is a child of it)."""
        return str(self._process.program()) if self._process is not None else ""

    def cancel(self) -> None:
        if self.isRunning():
            self._cancelled = True
            pid = int(self._process.processId())
            if pid > 0:
                killProcessTree(pid)
            else:
                self._process.kill()  # still starting: QProcess aborts the start itself

    def _readStdout(self) -> None:
        text = self._process.readAllStandardOutput().data().decode("utf-8", "replace")
        for record in self._parser.feed(text):
            if self._onProgress and not self._cancelled:
                self._onProgress(record)

    def _readStderr(self) -> None:
        self._stderr.append(self._process.readAllStandardError().data().decode("utf-8", "replace"))

    def _failedToStart(self, error) -> None:
        if error == self._qt.QProcess.FailedToStart:
            self._deliver(ProcessResult(None, errorMessage=f"cannot start {self._process.program()}: "
                                                           f"{self._process.errorString()}"))

    def _finish(self, *args) -> None:
        self._readStdout()
        self._readStderr()
        normalExit = self._process.exitStatus() == self._qt.QProcess.NormalExit
        exitCode = int(self._process.exitCode()) if normalExit else None
        self._deliver(ProcessResult(exitCode, self._cancelled, self._parser.errorMessage, "".join(self._stderr)))

    def _deliver(self, result: ProcessResult) -> None:
        onFinished, self._onFinished = self._onFinished, None
        if onFinished:
            onFinished(result)
