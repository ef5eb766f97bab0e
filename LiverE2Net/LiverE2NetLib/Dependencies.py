"""Find what Slicer's Python lacks to run the `liver-e2net` child, ask once, install it, and say what happened.

PyTorch comes from the PyTorch Utils module, which picks the CUDA build that fits the GPU; the rest from pip, only
what is missing, under constraints that pin Slicer's own numpy, SimpleITK and torch to the installed versions, so an
install can never replace them (pip refuses instead, and the message says so). The repository's tested versions
(constraints.txt, installed beside the module) come first; where Slicer's Python cannot have them, any version in
the ranges. The Logic only checks (`missingMessage`); the panels ask and install through `DependencyInstaller`,
which uses slicer.util's dialogs and pip_install (the tests put stand-ins there).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import slicer
from liver_e2net import protocol

TORCH = "torch"
PROTECTED = ("numpy", "SimpleITK", "torch", "vtk")  # Slicer's own builds: pinned as installed, never replaced
IMPORT_NAMES = {"scikit-image": "skimage", "connected-components-3d": "cc3d"}  # distribution -> import name, where they differ
NOTHING, INSTALLED, DECLINED, CANCELLED, FAILED = "nothing", "installed", "declined", "cancelled", "failed"
TITLE = "Liver E2Net"


@dataclass(frozen=True)
class Requirement:
    name: str  # pip's distribution name
    specifier: str = ""  # ">=2.3"
    optional: bool = False  # wanted by a panel feature (the live plot), not by the child
    module: str = ""  # import name; "" for the usual one

    @classmethod
    def parse(cls, text: str, optional: bool = False) -> Requirement:
        name, specifier = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(.*?)\s*", text).groups()
        return cls(name, specifier, optional)

    @property
    def importName(self) -> str:
        return self.module or IMPORT_NAMES.get(self.name, self.name.replace("-", "_"))

    @property
    def label(self) -> str:
        return "PyTorch" if self.name == TORCH else self.name

    def __str__(self) -> str:
        return self.name + self.specifier

    def installed(self) -> bool:
        return importlib.util.find_spec(self.importName) is not None


def coreRequirements() -> list[Requirement]:
    return [Requirement.parse(text) for text in protocol.RUNTIME_REQUIREMENTS]


def plotRequirements() -> list[Requirement]:
    return [Requirement.parse(text, optional=True) for text in protocol.PLOT_REQUIREMENTS]


def missingRequirements(requirements: Iterable[Requirement] | None = None) -> list[Requirement]:
    importlib.invalidate_caches()  # a package pip just wrote is seen at once
    return [requirement for requirement in (coreRequirements() if requirements is None else requirements)
            if not requirement.installed()]


def names(requirements: Iterable[Requirement]) -> str:
    return ", ".join(requirement.label for requirement in requirements)


def missingMessage(requirements: Iterable[Requirement] | None = None) -> str:
    """"" when nothing required is missing; else what is missing and the one-click fix (for the Logic's errors)."""
    missing = [requirement for requirement in missingRequirements(requirements) if not requirement.optional]
    if not missing:
        return ""
    return (f"Slicer's Python lacks {names(missing)}: click the Liver E2Net panel's Segment (or Start training) "
            "button to install it, or run LiverE2NetLib.Dependencies.DependencyInstaller().ensure() in the Python "
            "console, then try again.")


@dataclass(frozen=True)
class InstallOutcome:
    status: str  # NOTHING, INSTALLED, DECLINED, CANCELLED or FAILED
    message: str  # for the panel's status line; "" when nothing was missing
    ready: bool  # every required package is there now
    details: str = ""  # pip's output, for the error dialog


def constraintsFile() -> Path | None:
    """The tested versions: in Resources beside the installed module, or at the top of a source checkout."""
    package = Path(protocol.__file__).resolve().parent
    for path in (package.parent / "Resources" / "constraints.txt", package.parent.parent / "constraints.txt"):
        if path.is_file():
            return path
    return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraintLines(tested: bool = True) -> list[str]:
    """Pins for pip: the protected packages as installed, then (`tested`) the repository's versions of the rest.
    torch is never pip's: only PyTorch Utils installs it."""
    pins = {}
    for name in PROTECTED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins[_canonical(name)] = f"{name}=={importlib.metadata.version(name)}"
    path = constraintsFile() if tested else None
    for line in path.read_text(encoding="utf-8").splitlines() if path else []:
        line = line.split("#")[0].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", line)
        if name and _canonical(name.group()) not in pins and _canonical(name.group()) != TORCH:
            pins[_canonical(name.group())] = line
    return list(pins.values())


class _Tee(io.TextIOBase):
    """Keeps what pip prints (Slicer's pip_install prints each line) while it still reaches the console."""

    def __init__(self, stream, kept: io.StringIO):
        self.stream, self.kept = stream, kept

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text) if self.stream else len(text)

    def flush(self) -> None:
        if self.stream:
            self.stream.flush()


def pipError(output: str, error: Exception) -> str:
    """pip's own reason: its ERROR lines, else its last lines, else the exception."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return " ".join(errors or lines[-3:]) or str(error)


class DependencyInstaller:
    """One confirmation for everything missing, then PyTorch (PyTorch Utils) and the rest (pip) with a progress
    dialog, a check that each package imports now, and an outcome that says what to do next. `onInstalled` runs
    after a successful install (the panels list the models again: their descriptions need PyTorch)."""

    def __init__(self, requirements: Iterable[Requirement] | None = None, onInstalled: Callable[[], None] | None = None):
        self.requirements = list(coreRequirements() if requirements is None else requirements)
        self.onInstalled = onInstalled or (lambda: None)
        self._declined: set[str] = set()  # optional packages declined once are not offered again this session

    def missing(self) -> list[Requirement]:
        return [requirement for requirement in missingRequirements(self.requirements)
                if not (requirement.optional and requirement.name in self._declined)]

    def noteMissing(self, showStatus: Callable[..., None]) -> str:
        """On entering a module: the offer, in the status line and without a dialog (the Run button asks)."""
        required = [requirement for requirement in self.missing() if not requirement.optional]
        if not required:
            return ""
        note = (f"Slicer's Python lacks {names(required)}: the Run button offers to install it (once, with your "
                "confirmation).")
        showStatus(note)
        return note

    def readyFor(self, showStatus: Callable[..., None]) -> bool:
        """The panels' hook before a run: ensure(), its message in the status line; True when the run may go on."""
        outcome = self.ensure()
        if outcome.message:
            showStatus(outcome.message, error=not outcome.ready)
        return outcome.ready

    def ensure(self) -> InstallOutcome:
        missing = self.missing()
        if not missing:
            return InstallOutcome(NOTHING, "", True)
        required = [requirement for requirement in missing if not requirement.optional]
        torch = [requirement for requirement in missing if requirement.name == TORCH]
        detail = "\n".join(f"- {requirement}" + (" (optional)" if requirement.optional else "") for requirement in missing)
        question = (f"Liver E2Net needs {names(missing)} in Slicer's Python. Install now? This downloads from the "
                    "internet and may take several minutes" + (" (PyTorch: about 1-3 GB, with the CUDA build that "
                                                              "fits this computer's GPU)." if torch else "."))
        if not slicer.util.confirmOkCancelDisplay(question, f"{TITLE}: install Python packages", detailedText=detail):
            self._declined |= {requirement.name for requirement in missing if requirement.optional}
            if not required:
                return InstallOutcome(DECLINED, f"Not installed: {names(missing)} (optional).", True)
            return InstallOutcome(DECLINED, f"Nothing was installed, so nothing was run: {names(required)} is needed. "
                                  "Click again to be asked again.", False)
        return self.install(missing)

    def install(self, missing: list[Requirement]) -> InstallOutcome:
        import qt

        torch = [requirement for requirement in missing if requirement.name == TORCH]
        others = [requirement for requirement in missing if requirement.name != TORCH]
        steps = [(torch, self._installTorch)] if torch else []
        steps += [(others, self._pipInstall)] if others else []
        dialog = slicer.util.createProgressDialog(maximum=len(steps), windowTitle=f"{TITLE}: installing")
        done: list[Requirement] = []
        try:
            for index, (requirements, step) in enumerate(steps):
                if dialog.wasCanceled():
                    return self._outcome(CANCELLED, done, missing, f"Installation cancelled: {names(done) or 'nothing'} "
                                         "installed. Click again to install the rest.")
                dialog.setLabelText(f"Installing {names(requirements)} ({index + 1} of {len(steps)}); this may take "
                                    "several minutes...")
                dialog.setValue(index)
                qt.QApplication.processEvents()
                problem, output = step(requirements)
                if problem:
                    return self._outcome(FAILED, done, missing, f"Installing {names(requirements)} failed: {problem}",
                                         output)
                done += requirements
            dialog.setValue(len(steps))
        finally:
            dialog.close()
        still = missingRequirements(missing)
        if still:
            return self._outcome(FAILED, done, missing, f"{names(still)} still cannot be imported after the install: "
                                 "restart Slicer and try again.")
        self.onInstalled()
        return self._outcome(INSTALLED, done, missing, f"Installed {names(done)}.")

    def _outcome(self, status: str, done, missing, message: str, output: str = "") -> InstallOutcome:
        ready = not [requirement for requirement in missingRequirements(missing) if not requirement.optional]
        if status == INSTALLED:
            slicer.util.infoDisplay(message, windowTitle=TITLE)
        elif status == FAILED:
            if done:
                message += f" ({names(done)} did install.)"
            slicer.util.errorDisplay(message, windowTitle=TITLE, detailedText=output or message)
        return InstallOutcome(status, message, ready, output)

    def _installTorch(self, requirements: list[Requirement]) -> tuple[str, str]:
        try:
            import PyTorchUtils
        except ImportError:
            return ("the PyTorch Utils module is missing: install the PyTorch extension with the Extensions Manager, "
                    "restart Slicer and try again."), ""
        specifier = requirements[0].specifier
        output = io.StringIO()
        try:
            with _capture(output):
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                      torchVersionRequirement=specifier)
        except Exception as error:  # PyTorch Utils raises pip's error as it comes
            return f"{pipError(output.getvalue(), error)} Install PyTorch{specifier} in the PyTorch Utils module, " \
                   "then try again.", output.getvalue()
        if torch is None:
            return (f"PyTorch Utils installed nothing. Install PyTorch{specifier} in the PyTorch Utils module, then "
                    "try again."), output.getvalue()
        return "", output.getvalue()

    def _pipInstall(self, requirements: list[Requirement]) -> tuple[str, str]:
        """The tested versions first; if pip cannot have them here, any version in the ranges (Slicer's own
        packages stay pinned in both)."""
        attempts = [True, False] if constraintsFile() else [False]
        first = None
        for tested in attempts:
            problem, output = self._pipAttempt(requirements, constraintLines(tested))
            if not problem:
                return "", output
            first = first or (problem, output)
        problem, output = first
        return f"{problem} Check the internet connection (pip's full output is in the Python console), then try " \
               "again.", output

    def _pipAttempt(self, requirements: list[Requirement], pins: list[str]) -> tuple[str, str]:
        output = io.StringIO()
        with tempfile.TemporaryDirectory(prefix="LiverE2Net-pip-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
            try:
                with _capture(output):
                    slicer.util.pip_install(["--constraint", str(constraints), *map(str, requirements)])
            except Exception as error:  # CalledProcessError, or OSError when pip cannot start
                return pipError(output.getvalue(), error), output.getvalue()
        return "", output.getvalue()


@contextlib.contextmanager
def _capture(kept: io.StringIO):
    with contextlib.redirect_stdout(_Tee(sys.stdout, kept)), contextlib.redirect_stderr(_Tee(sys.stderr, kept)):
        yield
