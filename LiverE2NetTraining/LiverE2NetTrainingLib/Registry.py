"""Putting a trained model where the segmentation module lists models: its user model folder (one shared setting,
`LiverE2NetLib.Models.userModelFolder`), as NAME.pt with the run's log beside it as NAME.log."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from liver_e2net.errors import UserInputError
from liver_e2net.protocol import TRAIN_LOG as RUN_LOG
from LiverE2NetLib.Models import childInfo, userModelFolder


def registerModel(path: str | Path, name: str | None = None, modelFolder: str | Path | None = None) -> Path:
    """Copies a checkpoint into the model folder (checked first: an unreadable file is refused); returns the copy."""
    source = Path(path)
    answer = childInfo([source])[0]  # `liver-e2net info` reads it in a child: its reason if it cannot
    if not isinstance(answer, dict):
        raise UserInputError(answer)
    folder = Path(modelFolder) if modelFolder else userModelFolder()
    target = folder / f"{name or source.parent.name}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomicCopy(source, target)
        if (source.parent / RUN_LOG).is_file():
            _atomicCopy(source.parent / RUN_LOG, target.with_suffix(".log"))
    except OSError as error:
        raise UserInputError(f"cannot copy the model into {folder}: {error.strerror}; choose another model "
                             "folder in the Liver E2Net module") from error
    refreshSegmentationModule()
    return target


def _atomicCopy(source: Path, target: Path) -> None:
    """The segmentation module may list the folder at any moment: it must never see half a file."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def refreshSegmentationModule() -> None:
    """Refresh the segmentation panel's model list now if it exists (it also re-lists whenever it is entered)."""
    import slicer

    module = getattr(getattr(slicer, "modules", None), "livere2net", None)
    widget = module.widgetRepresentation().self() if module is not None else None
    panel = getattr(widget, "panel", None)
    if panel is not None:
        panel.refreshModels()
