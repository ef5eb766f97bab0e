"""Stand-ins for what installs packages in Slicer: slicer.util's pip_install, message boxes and progress dialog, and
the PyTorch Utils module. Test-only: nothing is downloaded. An "install" writes an importable module into a
temporary folder on sys.path, so the code under test sees the package appear exactly as after a real pip run;
a failure prints pip's own lines and raises as Slicer's pip_install does.
"""

from __future__ import annotations

import shlex
import sys
import types
from pathlib import Path
from subprocess import CalledProcessError


class PackageStandIns:
    """`install(monkeypatch)` puts everything in place; the lists record what the code asked for."""

    def __init__(self, sitePackages: Path, torchModule: str = "torch"):
        self.sitePackages, self.torchModule = sitePackages, torchModule
        self.answer = True  # the user's answer to a confirmation
        self.failures: dict[str, list[str]] = {}  # distribution -> the lines pip prints before it fails
        self.torchResult = "module"  # "module", "none" (PyTorch Utils installed nothing) or "error"
        self.pipCalls: list[list[str]] = []
        self.constraints: list[str] = []  # the text of each call's constraints file (it is gone afterwards)
        self.torchCalls: list[dict] = []
        self.questions: list[tuple[str, str]] = []  # (text, detailedText)
        self.messages: list[tuple[str, str]] = []  # ("info" | "error", text)
        self.dialogs: list = []

    def install(self, monkeypatch, withPyTorchUtils: bool = True) -> PackageStandIns:
        import slicer

        self.sitePackages.mkdir(parents=True, exist_ok=True)
        monkeypatch.syspath_prepend(str(self.sitePackages))
        for name in ("pip_install", "confirmOkCancelDisplay", "infoDisplay", "errorDisplay", "createProgressDialog"):
            monkeypatch.setattr(slicer.util, name, getattr(self, name))
        if withPyTorchUtils:
            module = types.ModuleType("PyTorchUtils")
            module.PyTorchUtilsLogic = lambda: types.SimpleNamespace(installTorch=self.installTorch)
            monkeypatch.setitem(sys.modules, "PyTorchUtils", module)
        else:
            monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails, as without the PyTorch extension
        return self

    def _write(self, module: str) -> None:
        (self.sitePackages / f"{module}.py").write_text("INSTALLED_BY_STAND_IN = True\n")

    # slicer.util

    def pip_install(self, requirements) -> None:
        args = shlex.split(requirements) if isinstance(requirements, str) else list(requirements)
        self.pipCalls.append(args)
        names, skip = [], False
        for arg in args:
            if skip:
                self.constraints.append(Path(arg).read_text())
            elif not arg.startswith("-"):
                names.append(arg.split(">")[0].split("=")[0].split("<")[0])
            skip = arg in ("-c", "--constraint")
        for name in names:
            if name in self.failures:
                for line in self.failures[name]:
                    print(line)
                raise CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *args])
        for name in names:
            self._write(name.replace("-", "_"))

    def confirmOkCancelDisplay(self, text, windowTitle=None, parent=None, **kwargs) -> bool:
        self.questions.append((text, kwargs.get("detailedText", "")))
        return self.answer

    def infoDisplay(self, text, windowTitle=None, parent=None, **kwargs) -> None:
        self.messages.append(("info", text))

    def errorDisplay(self, text, windowTitle=None, parent=None, **kwargs) -> None:
        self.messages.append(("error", text))

    def createProgressDialog(self, parent=None, value=0, maximum=100, labelText="", windowTitle="", **kwargs):
        """A real QProgressDialog, without Slicer's main window."""
        from PySide6.QtWidgets import QProgressDialog

        dialog = QProgressDialog(labelText, "Cancel", value, maximum)
        dialog.setWindowTitle(windowTitle)
        dialog.setMinimumDuration(0)
        self.dialogs.append(dialog)
        return dialog

    # PyTorch Utils

    def installTorch(self, askConfirmation=True, torchVersionRequirement=None, **kwargs):
        self.torchCalls.append({"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement})
        if self.torchResult == "error":
            print("ERROR: Could not find a version that satisfies the requirement torch>=2.3 (from versions: none)")
            raise CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", "torch"])
        if self.torchResult == "none":
            return None
        self._write(self.torchModule)
        return types.ModuleType(self.torchModule)
