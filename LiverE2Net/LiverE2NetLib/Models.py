"""What the panel offers: the bundled model, every model in the user's model folder, the devices and the accuracy."""

from __future__ import annotations

import enum
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from liver_e2net import protocol

from .ChildProcess import ProcessResult, childEnvironment, killProcessTree, pythonExecutable

USER_MODEL_FOLDER_SETTING = "LiverE2Net/UserModelFolder"


class Device(enum.Enum):
    """Member names are the panel's labels; values are the CLI's --device."""

    Auto = "auto"
    CPU = "cpu"
    GPU = "cuda"


class Accuracy(enum.Enum):
    """Member names are the panel's labels; values are the CLI's --tta. Best fuses stage 2 at the model's own scales
    (most: 0.875 and 1, about 2x the stage-2 time; one whose fusion did not hold up on held-out CT carries one, so its
    Best is its Fast). No flip: the bundled model never saw mirrored anatomy, and flip fusion made it worse (liver
    -11 % on the sample CT)."""

    Fast = "none"
    Best = "multiscale"

    @classmethod
    def parse(cls, value: Accuracy | str) -> Accuracy:
        """A member, its --tta value ("none") or its label in any case ("best"); ValueError otherwise."""
        if isinstance(value, cls):
            return value
        for member in cls:
            if str(value) == member.value or str(value).lower() == member.name.lower():
                return member
        raise ValueError(f"unknown accuracy {value!r}")


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    bundled: bool
    description: str  # one line from the checkpoint, or why it could not be read
    default: bool = False  # the model `segment` uses without --model

    @property
    def label(self) -> str:
        return f"{self.path.stem} (bundled)" if self.bundled else self.path.stem


def userModelFolder() -> Path:
    """Where training writes models and where the panel looks for them (a Slicer setting)."""
    import qt

    value = qt.QSettings().value(USER_MODEL_FOLDER_SETTING)
    return Path(value) if value else Path.home() / ".liver_e2net" / "models"


_infoCache: dict[tuple, dict | str] = {}
INFO_TIMEOUT_S = 300  # a first import of PyTorch on a busy machine takes many seconds


def childInfo(models: list[Path | None]) -> list[dict | str]:
    """`liver-e2net info --json` of each model (None: the bundled one), one child each, all at once: PyTorch and
    the networks never load into Slicer's process. Each answer is the parsed JSON, or the child's error message;
    answers are cached per file version."""
    keys = [_fileKey(model) for model in models]
    pending = {key: model for key, model in zip(keys, models) if key not in _infoCache}
    children = {key: _startInfo(model) for key, model in pending.items()}
    for key, child in children.items():
        _infoCache[key] = _infoAnswer(child)
    return [_infoCache[key] for key in keys]


def forgetModelInfo() -> None:
    """After PyTorch is installed, the answers cached without it are wrong."""
    _infoCache.clear()


def _fileKey(path: Path | None) -> tuple:
    if path is None:
        return ("bundled",)
    try:
        stat = Path(path).stat()
    except OSError:
        return (str(path), None)
    return (str(path), stat.st_mtime_ns, stat.st_size)


def _startInfo(model: Path | None):
    command = [pythonExecutable(), "-m", "liver_e2net", "info", "--json", "--device", "cpu"]
    if model is not None:
        command += ["--model", str(model)]
    try:
        return subprocess.Popen(command, env=childEnvironment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, encoding="utf-8", errors="replace")
    except OSError as error:
        return f"cannot start {command[0]}: {error.strerror}"


def _infoAnswer(child) -> dict | str:
    if isinstance(child, str):
        return child
    try:
        stdout, stderr = child.communicate(timeout=INFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        killProcessTree(child.pid)
        child.communicate()
        return f"no answer from `liver-e2net info` within {INFO_TIMEOUT_S} s"
    if child.returncode == 0:
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            pass
    marker = "liver-e2net info: error: "  # the CLI's user message, which may span lines
    if marker in stderr:
        return stderr[stderr.rindex(marker) + len(marker):].strip()
    return ProcessResult(child.returncode if child.returncode >= 0 else None, stderr=stderr).failureMessage()


def describeModel(path: Path) -> str:
    """The checkpoint's one-line description, or why it could not be read."""
    answer = childInfo([path])[0]
    return answer["model"]["description"] if isinstance(answer, dict) else f"unreadable: {answer}"


def listModels(userFolder: Path | None = None) -> list[ModelEntry]:
    bundled = [path for path in protocol.offered_models() if path.is_file()]  # the default first
    folder = userFolder or userModelFolder()
    paths = bundled + (sorted(p for p in folder.glob("*.pt") if p not in bundled) if folder.is_dir() else [])
    childInfo(paths)  # every description in parallel children
    default = bundled[0] if bundled else None
    return [ModelEntry(path, path in bundled, describeModel(path), path == default) for path in paths]


def gpuStatus() -> tuple[bool, str]:
    """(available, reason): the GPU choice is greyed out with the reason when CUDA is absent."""
    answer = childInfo([None])[0]
    if isinstance(answer, dict):
        return bool(answer["cuda"]["available"]), str(answer["cuda"]["detail"])
    return False, f"PyTorch cannot run here ({answer})"
