"""Training data of the tumor false-positive filter: the model's own tumor candidates on labelled cases.

Each case is segmented as it is and as copies with synthetic tumors painted in (Hu et al. 2023), so a few livers
give many candidates of both kinds. A candidate is a true positive when it belongs to an output/reference
correspondence with Dice > 0.2 (Chlebus et al. 2018, metrics.chlebus_detection), else a false positive.
Features are computed on the network frame, as the pipeline computes them on its liver box.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from ..fp_filter import FEATURE_NAMES, candidate_features
from ..metrics import TUMOR_LABEL, chlebus_detection, label_components
from ..postprocessing import DEFAULT_MIN_LESION_ML
from ..progress import Reporter, null_reporter
from .augment import PHASES, simulate_phase
from .cases import read_case
from .sources import CaseSource
from .synthetic_tumors import insert_tumors

log = logging.getLogger("liver_e2net.training")

# White noise added to a noise copy, its standard deviation drawn per copy: low-dose and thin-slice CTs are this
# much noisier than the training cases, and noise alone makes the network draw false tumors (T16 on case03: 7
# candidates as it is, 165 with 20 HU of noise) that the filter must have seen.
NOISE_HU = (5.0, 20.0)


@dataclass
class CandidateSet:
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, len(FEATURE_NAMES))))  # (n, F)
    is_true: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (n,)
    runs: list[dict] = field(default_factory=list)  # per segmented volume: case, copy, candidates, true

    def add(self, features: np.ndarray, is_true: np.ndarray, **run) -> None:
        self.features = np.concatenate([self.features, features])
        self.is_true = np.concatenate([self.is_true, is_true])
        self.runs.append({**run, "candidates": int(is_true.size), "true": int(is_true.sum())})


def labelled_candidates(
    predicted: np.ndarray,
    reference: np.ndarray,
    ct_hu: np.ndarray,
    tumor_probability: np.ndarray,
    spacing: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """(features, is_true) of every predicted tumor component; arrays [z, y, x] on one grid, label maps {0,1,2}."""
    components, count = label_components(predicted == TUMOR_LABEL)
    features = candidate_features(components, count, ct_hu, tumor_probability, predicted >= 1, spacing)
    detection = chlebus_detection(predicted == TUMOR_LABEL, reference == TUMOR_LABEL, spacing)
    hits = {pred for correspondence in detection.hits for pred in correspondence.pred_ids}
    return features, np.array([i in hits for i in range(1, count + 1)], dtype=bool)


def collect_candidates(
    segmenter,
    sources: Sequence[CaseSource],
    synthetic_copies: int,
    seed: int = 0,
    progress: Reporter = null_reporter,
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML,
    phase_copies: int = 0,
    noise_copies: int = 0,
) -> CandidateSet:
    """Runs `segmenter` (its filter off) on every case, on `synthetic_copies` copies with synthetic tumors, and on
    `phase_copies` more such copies each moved to another contrast phase (arterial, delayed or unenhanced, drawn per
    copy): the false candidates of other phases are ones a portal-venous training set never shows the filter; and on
    `noise_copies` more with white noise of NOISE_HU, for the false candidates of noisier CTs."""
    if segmenter.fp_filter is not None:
        raise ValueError("collect candidates with the false-positive filter off (Segmenter(fp_filter='off'))")
    candidates = CandidateSet()
    per_case = 1 + synthetic_copies + phase_copies + noise_copies
    total = len(sources) * per_case
    for index, source in enumerate(sources):
        volume, reference = read_case(source)
        rng = np.random.default_rng([seed, index])
        # Their own streams: the copies before them stay as they were.
        phase_rng, noise_rng = (np.random.default_rng([seed, index, stream]) for stream in (1, 2))
        for copy in range(per_case):
            kind = "synthetic" if copy <= synthetic_copies else "phase" if copy <= synthetic_copies + phase_copies else "noise"
            phase = str(phase_rng.choice(PHASES[1:])) if kind == "phase" else None
            noise = float(noise_rng.uniform(*NOISE_HU)) if kind == "noise" else None
            copy_rng = {"synthetic": rng, "phase": phase_rng, "noise": noise_rng}[kind]
            what = source.name + (f" synthetic copy {copy}" if copy else "") + (f", {phase}" if phase else "")
            what += f", noise {noise:.0f} HU" if noise else ""
            progress("candidates", (index * per_case + copy) / total, what)
            ct, label = volume.array, reference
            if copy:
                try:
                    ct, label, _ = insert_tumors(volume.array, reference, volume.spacing, copy_rng)
                except UserInputError as error:  # a liver too small or crowded: use the case as it is
                    log.warning("%s: no synthetic tumors (%s)", source.name, error)
                    break
            if phase:
                ct = np.round(simulate_phase(ct, label, phase, phase_rng)).astype(volume.array.dtype)
            if noise:
                ct = np.round(ct + noise_rng.normal(0.0, noise, ct.shape)).astype(volume.array.dtype)
            image = dataclasses.replace(volume, array=ct).to_image()
            result = segmenter.segment(image, probabilities=True, grow=False, min_lesion_ml=min_lesion_ml)
            features, is_true = labelled_candidates(
                result.label, label, ct, result.probabilities[1], volume.spacing
            )
            run = dict(case=source.name, copy=copy, phase=phase or "portal", noise_hu=noise or 0.0)
            candidates.add(features, is_true, **run)
            log.info("%s: %d candidates, %d true positives", what, is_true.size, int(is_true.sum()))
    progress("candidates", 1.0, f"{candidates.is_true.size} candidates")
    return candidates
