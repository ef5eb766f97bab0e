"""What a run tells the outside: progress lines (overall fraction, ETA), one metrics.jsonl record and one log
line per epoch. Only rank 0 reports."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..progress import Reporter
from . import run_folder

log = logging.getLogger("liver_e2net")

REPORT_INTERVAL_S = 0.5


class RunReporter:
    def __init__(self, progress: Reporter, stages: tuple[int, ...], epochs: int, output: Path, is_main: bool):
        self.progress, self.stages, self.epochs, self.output, self.is_main = (
            progress,
            stages,
            epochs,
            output,
            is_main,
        )
        self.started = time.monotonic()
        self.reported = 0.0
        self.fraction_at_start: float | None = None

    def step(self, stage: int, epoch: int, step: int, steps: int, loss: float, dice: dict[str, Any]) -> None:
        """After `step` of `steps` of epoch `epoch` (0-based); throttled, except each epoch's first step."""
        if step == 1 or time.monotonic() - self.reported >= REPORT_INTERVAL_S:
            message = f"stage {stage} epoch {epoch + 1}/{self.epochs} step {step}/{steps} loss {loss:.4f}"
            self._send(stage, epoch, step, steps, loss, dice, message)

    def epoch(self, stage: int, epoch: int, steps: int, record: dict[str, Any], action: str) -> None:
        """The epoch's record (see Trainer): appended to metrics.jsonl, logged and reported."""
        dice = {"liver": record["val_dice_liver"], "tumor": record["val_dice_tumor"]}
        log.info(
            "stage %d epoch %d: train loss %.4f, val loss %.4f, val Dice liver %s tumor %s, lr %g, %.1f s "
            "(%s)",
            stage, epoch + 1, record["train_loss"], record["val_loss"], fmt(dice["liver"]),
            fmt(dice["tumor"]), record["lr"], record["seconds"], action,
        )  # fmt: skip
        if self.is_main:
            run_folder.append_metrics(self.output, record)
            message = (
                f"stage {stage} epoch {epoch + 1}/{self.epochs}: val loss {record['val_loss']:.4f}, "
                f"Dice liver {fmt(dice['liver'])} tumor {fmt(dice['tumor'])}"
            )
            self._send(stage, epoch, steps, steps, record["train_loss"], dice, message)

    def _send(
        self, stage: int, epoch: int, step: int, steps: int, loss: float, dice: dict, message: str
    ) -> None:
        if not self.is_main:
            return
        now = self.reported = time.monotonic()
        position = self.stages.index(stage) + (epoch + step / steps) / self.epochs
        fraction = min(1.0, position / len(self.stages))
        if self.fraction_at_start is None:
            self.fraction_at_start = fraction
        done = fraction - self.fraction_at_start
        eta = (now - self.started) * (1 - fraction) / done if done > 0 else None
        self.progress(
            f"stage{stage}", fraction, message, epoch=epoch + 1, step=step, loss=round(loss, 5),
            val_dice_liver=dice.get("liver"), val_dice_tumor=dice.get("tumor"),
            eta_s=None if eta is None else round(eta),
        )  # fmt: skip


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
