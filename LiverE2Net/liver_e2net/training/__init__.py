"""Training: datasets, augmentation, synthetic tumors, losses, trainer."""

from .config import AugmentConfig, TrainConfig
from .run_folder import read_state
from .sources import CasePaths, TrainingCase, discover
from .trainer import Trainer, TrainResult, train

__all__ = [
    "AugmentConfig",
    "CasePaths",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingCase",
    "discover",
    "read_state",
    "train",
]
