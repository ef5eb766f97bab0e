"""The paper's learning-rate schedule: divide by 10 when the validation loss stops falling, stop after two drops."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RELATIVE_IMPROVEMENT = 1e-4  # as torch's ReduceLROnPlateau: smaller gains count as a plateau


@dataclass
class PlateauSchedule:
    """`step(val_loss)` -> 'improved' | 'plateau' | 'drop' | 'stop'.

    After `patience` epochs without a new best loss the learning rate is divided by 10; the plateau that would
    call for drop number `max_drops + 1` ends training instead ("after decreasing the learning rate twice, we
    stop training": the last rate is trained until it, too, stops helping).
    """

    lr: float
    patience: int
    max_drops: int
    best: float = float("inf")
    bad_epochs: int = 0
    drops: int = 0

    def step(self, val_loss: float) -> str:
        if val_loss < self.best * (1 - RELATIVE_IMPROVEMENT):
            self.best, self.bad_epochs = val_loss, 0
            return "improved"
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return "plateau"
        self.bad_epochs = 0
        if self.drops >= self.max_drops:
            return "stop"
        self.drops += 1
        self.lr /= 10
        return "drop"

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> PlateauSchedule:
        return cls(**state)
