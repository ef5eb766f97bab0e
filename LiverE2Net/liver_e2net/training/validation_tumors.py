"""Synthetic tumors in validation cases that have none, painted once with a fixed seed.

A validation set of liver-only cases rewards a tumor branch that predicts nothing (it is the surest way to
avoid false positives), so best.pt would be chosen against tumor detection. With the same synthetic tumors
in every validation pass, the validation loss and tumor Dice measure what training is after.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..errors import UserInputError
from .cache import CachedCase
from .synthetic_tumors import TUMOR, SyntheticTumorConfig, insert_tumors

log = logging.getLogger("liver_e2net.training")

VALIDATION_STREAM = 2  # seed stream apart from the training (0) and BatchNorm-calibration (1) samples

# What new runs paint (TrainConfig.validation_tumor_range): 2-5 tumors, a tenth tiny and the rest small, medium and
# large alike, of every kind, some at the capsule and bulging out of it; on case02 (20 slices) 19 tumors of 4-30 mm
# over 8 seeds (train draws one: 7, 11 and 29 mm today), where the generator's defaults drew two of 6 and 7 mm.
VALIDATION_TUMORS = SyntheticTumorConfig(
    count_range=(2, 5), size_class_weights=(0.1, 0.3, 0.3, 0.3), allow_border=True
)


def with_synthetic_tumors(
    cases: list[CachedCase], seed: int, config: SyntheticTumorConfig
) -> list[CachedCase]:
    """`cases` with those lacking tumor labels replaced by in-memory copies holding synthetic tumors."""
    result = []
    for index, case in enumerate(cases):
        if case.tumor_slices:
            result.append(case)
            continue
        rng = np.random.default_rng([seed, VALIDATION_STREAM, index])
        try:
            ct, label, records = insert_tumors(
                np.asarray(case.ct), np.asarray(case.label), case.spacing, rng, config
            )
        except UserInputError as error:
            log.warning("validation case %s keeps no synthetic tumor: %s", case.name, error)
            result.append(case)
            continue
        tumor_slices = tuple(int(z) for z in np.flatnonzero((label == TUMOR).any(axis=(1, 2))))
        sizes = ", ".join(f"{record.diameter_mm:.0f}" for record in records)
        log.info("validation case %s: synthetic tumors of %s mm", case.name, sizes)
        result.append(
            dataclasses.replace(case, tumor_slices=tumor_slices, _arrays={"ct": ct, "label": label})
        )
    return result
