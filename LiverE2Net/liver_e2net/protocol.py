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
TTA_MODES = ("none", "flip", "multiscale", "flip+multiscale")
FP_FILTER_MODES = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32")  # auto: fp16 on CUDA, bf16 on CPUs with native bf16 (devices.py), else fp32
PROGRESS_MODES = ("auto", "bar", "jsonl", "none")

# -- the progress record: one JSON object per stdout line under --progress jsonl -----------------------------------
# {"stage", "fraction" (0-1 over the whole run), "message", then extra fields: index/total (a batch's case, 1-based),
# case, status, epoch, loss, ...}. `stage` is one of STAGES: progress_record refuses any other.
STAGE_LOAD, STAGE_READ, STAGE_WRITE = "load", "read", "write"
STAGE_COARSE, STAGE_FINE, STAGE_POSTPROCESS = "stage1", "stage2", "postprocess"  # also the training stages
STAGE_CASE = "case"  # a batch's case finished: index/total, case, status
STAGE_CANDIDATES, STAGE_ROBUSTNESS = "candidates", "robustness"
STAGE_DONE, STAGE_ERROR = "done", "error"  # the last line of a run; an error line carries the user's message
STAGE_CHECK = "check"  # check-data: one line per pair and per unpaired file (PAIR_KEYS / UNPAIRED_KEYS below)
STAGES = (STAGE_LOAD, STAGE_READ, STAGE_COARSE, STAGE_FINE, STAGE_POSTPROCESS, STAGE_WRITE, STAGE_CASE,
          STAGE_CANDIDATES, STAGE_ROBUSTNESS, STAGE_CHECK, STAGE_DONE, STAGE_ERROR)  # fmt: skip


def progress_record(stage: str, fraction: float, message: str = "", **extra: Any) -> dict[str, Any]:
    """One progress line's object: `fraction` in [0, 1] over the whole run, extra fields (index, total, case,
    status, epoch, loss, ...) after the fixed ones. A stage the panels do not know is a bug of the sender."""
    if stage not in STAGES:
        raise ValueError(f"progress stage {stage!r} is not in protocol.STAGES")
    return {"stage": stage, "fraction": round(float(fraction), 4), "message": message, **extra}


# -- what counts as an input: the panels check with these before a child starts, the core with the same rules ------
PLAUSIBLE_HU = (-3100.0, 40000.0)  # GE pads with -3024; dense metal reaches tens of thousands only in extended CT
_RAW_DICOM_STARTS = (b"\x08\x00\x00\x00", b"\x08\x00\x05\x00", b"\x08\x00\x08\x00", b"\x08\x00\x16\x00")


def is_dicom_file(path: str | Path) -> bool:
    """Part-10 files carry 'DICM' after a 128-byte preamble (whatever their name); older exports (no preamble)
    start with a group 0008 element. Only regular files: opening a named pipe would block."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as stream:
            start = stream.read(132)
    except OSError:
        return False
    return start[128:] == b"DICM" or start[:4] in _RAW_DICOM_STARTS


def ct_range_problem(name: str, low: float, high: float) -> str | None:
    """Why voxel values low..high are not a CT in Hounsfield units (constant, outside any CT, no air), or None."""
    if low == high:
        return f"{name} is constant ({low:g} everywhere): it holds no image"
    if low < PLAUSIBLE_HU[0] or high > PLAUSIBLE_HU[1]:
        return f"{name} has values {low:g}..{high:g}, outside any CT in Hounsfield units; pass a CT volume in HU"
    if low > -200:
        return (
            f"{name} does not look like CT in Hounsfield units: its lowest value is {low:g}, but air outside the "
            "body is about -1000 HU. If it is a CT stored without its rescale intercept, subtract 1024; MRI and "
            "other modalities are not supported"
        )
    return None


# -- the bundled model ------------------------------------------------------------------------------------------------
MODEL_ENVIRONMENT = "LIVER_E2NET_MODEL"
DEFAULT_MODEL_FILE = "liver_e2net_lite.pt"  # the fast default; other bundled models are offered beside it


def bundled_model_paths() -> list[Path]:
    """Every bundled model, the default first: Resources/Models/*.pt beside the module or the repository."""
    package = Path(__file__).resolve().parent
    for folder in (package.parent / "Resources" / "Models", package.parent.parent / "Resources" / "Models"):
        candidates = sorted(folder.glob("*.pt"), key=lambda path: (path.name != DEFAULT_MODEL_FILE, path.name))
        if candidates:
            return candidates
    return []


def offered_models() -> list[Path]:
    """The models offered besides the user's: $LIVER_E2NET_MODEL alone, else every bundled one, the default first."""
    if os.environ.get(MODEL_ENVIRONMENT):
        return [Path(os.environ[MODEL_ENVIRONMENT])]
    return bundled_model_paths()


def default_model_path() -> Path | None:
    """The model used when none is given: the first offered one."""
    offered = offered_models()
    return offered[0] if offered else None


# -- what Slicer's Python needs to run the child: pyproject.toml's dependencies (Testing/test_slicer_dependencies.py
# keeps the two equal); the Slicer side offers to install what is missing ------------------------------------------
RUNTIME_REQUIREMENTS = ("torch>=2.3", "numpy>=1.26", "scipy>=1.11", "scikit-image>=0.22",
                        "connected-components-3d>=3.12", "edt>=2.3", "SimpleITK>=2.3", "tqdm>=4.64", "threadpoolctl>=3.1",
                        "pydicom>=2.4")  # fmt: skip
PLOT_REQUIREMENTS = ("matplotlib>=3.7",)  # the training panel's live plot (the `plots` extra)


# -- training data: which files pair as CT + label, and which segments are liver or tumor. One convention for
# `train --data`, `check-data`, `evaluate` and the training panel ---------------------------------------------------
PAIR_SUFFIXES = OUTPUT_SUFFIXES + VOLUME_SUFFIXES  # a label may be a Slicer .seg.nrrd; longest suffix first
CT_WORDS = ("ct", "image", "img", "volume", "0000")  # 'case02_ct.nii.gz', nnU-Net's 'case02_0000.nii.gz'
LABEL_WORDS = ("label", "labels", "seg", "segmentation", "mask", "gt", "pred")  # 'case02_label.nii.gz'
WORD_SEPARATORS = "_.-"
NNUNET_IMAGES, NNUNET_LABELS = "imagesTr", "labelsTr"
NNUNET_CHANNEL = "_0000"  # nnU-Net names the (single) image channel NAME_0000.ext
MIN_TRAINING_CASES = 2  # one to train on, one to validate with (the split is by case)
TRAINING_PAIRS = "pairs.json"  # the training panel's export: a JSON list `train --data` reads
# `check-data`'s answer. --json: {"pairs": [PAIR_KEYS...], "unpaired": [UNPAIRED_KEYS...], "usable": N}; --progress
# jsonl: a "check" line per pair and per unpaired file, those keys after the progress fields. `problem` ("" if none)
# says why a pair is left out; `warning` is a note on a usable one.
PAIR_KEYS = ("name", "image", "label", "slices", "tumor", "problem", "warning")
UNPAIRED_KEYS = ("name", "file", "problem")
# An entry of a JSON list for `train --data` needs "image" and "label" ("name" optional; relative paths start at the
# list's folder); other keys are ignored, such as the panel's "pair", "from", "slices", "tumor", "liverSegments",
# "tumorSegments" in TRAINING_PAIRS.
TUMOR_WORDS = ("tumor", "tumour", "lesion", "metasta", "neoplasm", "cancer", "carcinoma", "hcc", "nodule")
NOT_LIVER_WORDS = ("vessel", "vein", "arter", "portal", "duct", "biliary")  # liver-named structures that are not it

FilePairs = tuple[list[tuple[str, Path, Path]], list[tuple[Path, str]]]  # ([(case, CT, label)], [(file, problem)])


def segment_role(name: str) -> str | None:
    """'liver', 'tumor' or None (ignored) for a segment name, case-insensitively."""
    words = "".join(char if "a" <= char <= "z" else " " for char in name.lower())
    if any(word in words for word in TUMOR_WORDS):
        return "tumor"  # before the liver test: "Liver tumor" is a tumor
    if ("liver" in words or "hepar" in words) and not any(word in words for word in NOT_LIVER_WORDS):
        return "liver"
    return None


def volume_stem(name: str | Path) -> str | None:
    """The case part of a volume file's name (suffix removed); None for other files and hidden ones ('._x.nii')."""
    name = Path(name).name
    suffix = next((s for s in PAIR_SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None or name.startswith(".") or len(name) == len(suffix):
        return None
    return name[: -len(suffix)]


def split_case_name(name: str | Path) -> tuple[str, str] | None:
    """(case, kind) of a volume file: kind 'label' ('case02_label.nii.gz', 'case02-seg.nrrd', any .seg.nrrd), 'ct'
    ('case02_ct.nii.gz', 'case02_0000.nrrd') or '' (unmarked: 'case02.nii.gz'); None for other files. The words
    (LABEL_WORDS, CT_WORDS) end the name after '_', '.' or '-', in any case."""
    stem = volume_stem(name)
    if stem is None:
        return None
    case = _without_word(stem, LABEL_WORDS)
    if case != stem or Path(name).name.lower().endswith(OUTPUT_SUFFIXES):
        return _without_word(case, CT_WORDS), "label"  # 'case02_ct.seg.nrrd' segments case02's CT
    case = _without_word(stem, CT_WORDS)
    return case, "ct" if case != stem else ""


def _without_word(stem: str, words: tuple[str, ...]) -> str:
    lower = stem.lower()
    for word in words:
        if len(stem) > len(word) + 1 and lower.endswith(word) and stem[-len(word) - 1] in WORD_SEPARATORS:
            return stem[: -len(word) - 1]
    return stem


def pair_flat_folder(files) -> FilePairs:
    """CT + label pairs among the files of one folder, by case name (split_case_name): 'NAME_ct' + 'NAME_label'; an
    unmarked 'NAME.ext' is whichever of the two its case lacks ('NAME_0000.nii.gz' + 'NAME.nii.gz' pair too).
    Files without a partner, or more than one CT or label for a case, come back with the problem."""
    cases: dict[str, dict[str, list[Path]]] = {}
    for file in sorted(map(Path, files)):
        parsed = split_case_name(file)
        if parsed is not None:
            cases.setdefault(parsed[0], {"ct": [], "label": [], "": []})[parsed[1]].append(file)
    pairs, unpaired = [], []
    for case, kinds in sorted(cases.items()):
        plain = kinds.pop("")
        for kind in ("ct", "label"):
            if not kinds[kind] and len(plain) == 1:
                kinds[kind], plain = plain, []
        found = kinds["ct"] + kinds["label"] + plain
        if len(found) == 2 and len(kinds["ct"]) == len(kinds["label"]) == 1:
            pairs.append((case, kinds["ct"][0], kinds["label"][0]))
        elif len(found) == 1:
            unpaired.append((found[0], f"no {'label' if kinds['ct'] else 'CT'} file with the same case name; "
                                       "name them NAME_ct.nii.gz and NAME_label.nii.gz"))
        else:
            names = ", ".join(file.name for file in found)
            unpaired += [(file, f"{names} are all case '{case}': keep one CT (NAME_ct) and one label (NAME_label)")
                         for file in found]
    return pairs, unpaired


def pair_nnunet(images, labels) -> FilePairs:
    """nnU-Net's layout: imagesTr/NAME_0000.ext (or NAME.ext, or NAME/ a DICOM series folder) + labelsTr/NAME.ext.
    `images` are the image entries (volume files and series folders), `labels` the label files."""
    image_cases = {}
    for image in sorted(map(Path, images)):
        stem = volume_stem(image) or image.name  # a folder is a DICOM series
        image_cases[stem[: -len(NNUNET_CHANNEL)] if stem.endswith(NNUNET_CHANNEL) else stem] = image
    label_cases = {volume_stem(label): label for label in sorted(map(Path, labels)) if volume_stem(label)}
    rule = f"; images are {NNUNET_IMAGES}/NAME.ext or NAME_0000.ext, labels {NNUNET_LABELS}/NAME.ext"
    pairs = [(case, image_cases[case], label_cases[case]) for case in sorted(image_cases.keys() & label_cases.keys())]
    unpaired = [(image_cases[case], f"no label {case}.ext in {NNUNET_LABELS}/{rule}")
                for case in sorted(image_cases.keys() - label_cases.keys())]
    unpaired += [(label_cases[case], f"no image {case}_0000.ext in {NNUNET_IMAGES}/{rule}")
                 for case in sorted(label_cases.keys() - image_cases.keys())]
    return pairs, unpaired
