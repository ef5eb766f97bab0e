"""Shared helpers for the Slicer-side tests (test_slicer_*.py)."""

from __future__ import annotations

import time
from pathlib import Path

FAKE_CHILD = Path(__file__).resolve().parent / "slicer_standins" / "fake_liver_e2net.py"


def nodeIds(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def isAlive(pid: int, graceSeconds: float = 5.0) -> bool:
    """Still running after `graceSeconds` (SIGKILL lands asynchronously); a zombie, killed but not yet reaped by a
    container's init, counts as dead."""
    deadline = time.monotonic() + graceSeconds
    while True:
        try:
            alive = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            alive = False
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def isolateSettings(folder: Path, modelFolder: Path) -> None:
    """Slicer settings (QSettings) in `folder`, the user model folder set: the user's own settings stay out."""
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(folder))
    QSettings().setValue("LiverE2Net/UserModelFolder", str(modelFolder))


def waitFor(condition, timeoutSeconds: float = 60.0, onEachLoop=None) -> None:
    """Runs the Qt event loop (which delivers the QProcess signals) until `condition()`; test-side only."""
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeoutSeconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        QApplication.processEvents()
        if onEachLoop:
            onEachLoop()
        time.sleep(0.005)
