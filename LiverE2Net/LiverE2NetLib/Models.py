"""What the panel offers: the bundled model, every model in the user's model folder, the devices and the accuracy."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

USER_MODEL_FOLDER_SETTING = "LiverE2Net/UserModelFolder"


class Device(enum.Enum):
    """Member names are the panel's labels; values are the CLI's --device."""

    Auto = "auto"
    CPU = "cpu"
    GPU = "cuda"


class Accuracy(enum.Enum):
    """Member names are the panel's labels; values are the CLI's --tta. Best fuses six passes of stage 2 (left-right
    flip x scales 0.875, 1, 1.125): about 6x the time of Fast."""

    Fast = "none"
    Best = "flip+multiscale"

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

    @property
    def label(self) -> str:
        return f"{self.path.stem} (bundled)" if self.bundled else self.path.stem


def userModelFolder() -> Path:
    """Where training writes models and where the panel looks for them (a Slicer setting)."""
    import qt

    value = qt.QSettings().value(USER_MODEL_FOLDER_SETTING)
    return Path(value) if value else Path.home() / ".liver_e2net" / "models"


_descriptions: dict[tuple[str, int, int], str] = {}


def describeModel(path: Path) -> str:
    """The checkpoint's one-line description, cached per file version; loading needs PyTorch, so it is lazy."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _descriptions:
        try:
            from liver_e2net.checkpoint import load_checkpoint

            _descriptions[key] = load_checkpoint(path).describe()
        except Exception as error:  # one unreadable file (or a missing PyTorch) must not hide the other models
            _descriptions[key] = f"unreadable: {error}"
    return _descriptions[key]


def listModels(userFolder: Path | None = None) -> list[ModelEntry]:
    from liver_e2net.checkpoint import default_model_path

    bundled = default_model_path()
    entries = [ModelEntry(bundled, True, describeModel(bundled))] if bundled and bundled.is_file() else []
    folder = userFolder or userModelFolder()
    if folder.is_dir():
        entries += [ModelEntry(path, False, describeModel(path)) for path in sorted(folder.glob("*.pt"))]
    return entries


def gpuStatus() -> tuple[bool, str]:
    """(available, reason): the GPU choice is greyed out with the reason when CUDA is absent."""
    try:
        from liver_e2net.devices import cuda_status
    except ImportError as error:
        return False, f"PyTorch is not installed ({error})"
    return cuda_status()
