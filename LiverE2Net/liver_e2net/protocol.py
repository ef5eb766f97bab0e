"""The contract between the Slicer panels and the `liver-e2net` child: file names, choices, stage names and the
progress record. Standard library only, so Slicer's process imports it without PyTorch or numpy; the Slicer side
imports nothing else of the core but `errors` and `report` (Testing/test_slicer_imports.py enforces it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .segments import SEGMENTS, SegmentInfo

__all__ = ["SEGMENTS", "SegmentInfo"]  # the output segments are part of the contract; defined in segments.py

# -- a training run's folder (`train -o RUN`) ---------------------------------------------------------------------
BEST_MODEL = "best.pt"  # the best validated model, inference's checkpoint format
LAST_MODEL = "last.pt"  # the newest model, written with every trainer state
TRAINER_STATE = "trainer_state.pt"  # what --resume needs and a model file does not
METRICS = "metrics.jsonl"  # one record per finished epoch
TRAIN_LOG = "train.log"

# -- a cohort's folder (`segment-batch -o OUTDIR`) ----------------------------------------------------------------
COHORT_TABLE = "cohort.csv"
CASE_RECORD = "case.json"  # one per case folder, written last: a finished case
LABEL_FILES = {  # --format -> the label map's file name in the case folder
    "nifti": "label.nii.gz",
    "nrrd": "label.nrrd",
    "seg.nrrd": "label.seg.nrrd",
    "mha": "label.mha",
    "dicom-seg": "seg.dcm",
}
PROBABILITY_FILE = "probabilities.nii.gz"
PREVIEW_FILE = "preview.png"  # the review figure of a case (axial, coronal, 3D)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")  # CT files a folder walk takes
OUTPUT_SUFFIXES = (".seg.nrrd",)  # segmentations, never CTs: left out of folder walks

# -- choices of the commands' options ------------------------------------------------------------------------------
OUTPUT_FORMATS = tuple(LABEL_FILES)
TTA_MODES = ("none", "flip", "multiscale", "flip+multiscale")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
FP_FILTER_MODES = ("auto", "on", "off")
PROGRESS_MODES = ("auto", "bar", "jsonl", "none")

# -- the progress record: one JSON object per stdout line under --progress jsonl -----------------------------------
PROGRESS_FIELDS = ("stage", "fraction", "index", "total", "message")  # index/total: the case (1-based) of a batch
STAGE_LOAD, STAGE_READ, STAGE_WRITE = "load", "read", "write"
STAGE_COARSE, STAGE_FINE, STAGE_POSTPROCESS = "stage1", "stage2", "postprocess"  # also the training stages
STAGE_CASE = "case"  # a batch's case finished: index/total, case, status
STAGE_CANDIDATES, STAGE_ROBUSTNESS = "candidates", "robustness"
STAGE_DONE, STAGE_ERROR = "done", "error"  # the last line of a run; an error line carries the user's message
STAGES = (STAGE_LOAD, STAGE_READ, STAGE_COARSE, STAGE_FINE, STAGE_POSTPROCESS, STAGE_WRITE, STAGE_CASE,
          STAGE_CANDIDATES, STAGE_ROBUSTNESS, STAGE_DONE, STAGE_ERROR)  # fmt: skip


def progress_record(stage: str, fraction: float, message: str = "", **extra: Any) -> dict[str, Any]:
    """One progress line's object: `fraction` in [0, 1] over the whole run, extra fields (index, total, case,
    status, epoch, loss, ...) after the fixed ones."""
    return {"stage": stage, "fraction": round(float(fraction), 4), "message": message, **extra}


# -- the bundled model ------------------------------------------------------------------------------------------------
MODEL_ENVIRONMENT = "LIVER_E2NET_MODEL"


def default_model_path() -> Path | None:
    """The bundled model: $LIVER_E2NET_MODEL, else Resources/Models/*.pt beside the module or the repository."""
    if os.environ.get(MODEL_ENVIRONMENT):
        return Path(os.environ[MODEL_ENVIRONMENT])
    package = Path(__file__).resolve().parent
    for folder in (package.parent / "Resources" / "Models", package.parent.parent / "Resources" / "Models"):
        candidates = sorted(folder.glob("*.pt"))
        if candidates:
            return candidates[0]
    return None


# -- what Slicer's Python needs to run the child: pyproject.toml's dependencies (Testing/test_slicer_dependencies.py
# keeps the two equal); the Slicer side offers to install what is missing ------------------------------------------
RUNTIME_REQUIREMENTS = ("torch>=2.3", "numpy>=1.26", "scipy>=1.11", "scikit-image>=0.22", "SimpleITK>=2.3",
                        "tqdm>=4.64", "pydicom>=2.4")  # fmt: skip
PLOT_REQUIREMENTS = ("matplotlib>=3.7",)  # the training panel's live plot (the `plots` extra)
