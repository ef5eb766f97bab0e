"""The output folder of a training run: best.pt / last.pt (inference's checkpoint format), trainer_state.pt (what
--resume needs and a model file does not: optimizer, schedule, position), metrics.jsonl and train.log."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..protocol import BEST_MODEL, LAST_MODEL, METRICS, TRAIN_LOG, TRAINER_STATE

STATE_FORMAT = 1
BEST, LAST, STATE, METRICS, LOG = BEST_MODEL, LAST_MODEL, TRAINER_STATE, METRICS, TRAIN_LOG


def prepare(output: Path, resume: bool) -> None:
    """Refuses an unwritable folder, a finished run's folder without --resume, and a --resume of nothing."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=output, prefix=".write-test")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserInputError(
            f"cannot write to the output folder {output}: {error.strerror}; choose a writable folder"
        ) from error
    if resume and not (output / STATE).is_file():
        raise UserInputError(f"{output} holds no {STATE}: there is no training run to resume there")
    if not resume and ((output / LAST).exists() or (output / STATE).exists()):
        raise UserInputError(
            f"{output} already holds a training run; continue it with --resume {output} "
            "or choose another output folder"
        )


def read_state(output: str | Path) -> dict[str, Any]:
    path = Path(output) / STATE
    if not path.is_file():
        raise UserInputError(f"{Path(output)} holds no {STATE}: there is no training run to resume there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated / foreign files
        raise UserInputError(f"{path} is not readable ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserInputError(
            f"{path} is not a trainer state of this liver-e2net version (format {STATE_FORMAT})"
        )
    saved = state.get("torch_version")
    if saved and _major_minor(saved) != _major_minor(torch.__version__):
        raise UserInputError(
            f"{path} was written by torch {saved}, this is torch {torch.__version__}: an exact resume needs the "
            f"same torch; continue the weights in a new run with --init {Path(output) / LAST} -o NEW_FOLDER"
        )
    return state


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def write_state(output: Path, state: dict[str, Any]) -> None:
    """Atomic, like save_checkpoint: an interrupted write never leaves a half state beside a valid last.pt."""
    handle, temporary = tempfile.mkstemp(dir=output, prefix=f".{STATE}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": STATE_FORMAT, "torch_version": str(torch.__version__), **state}, stream)
        os.replace(temporary, output / STATE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def append_metrics(output: Path, record: dict[str, Any]) -> None:
    with open(output / METRICS, "a") as stream:
        stream.write(json.dumps(record) + "\n")


@contextmanager
def file_log(output: Path, logger: logging.Logger) -> Iterator[None]:
    """Mirror `logger` (INFO and above) into train.log for the duration of the run."""
    handler = logging.FileHandler(output / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()
