"""Evaluation of predicted liver / tumor label maps against references: per case, mean and global scores.

Liver is label >= 1 (tumor inside), tumor is label == 2. Per case: LiTS segmentation scores for both,
LiTS and Chlebus et al. lesion detection, tumor burden and lesion tables. Global: Dice summed over cases
(LiTS "Dice global"), pooled detection counts and the tumor-burden RMSE. Arrays are [z, y, x];
spacing, origin and direction follow SimpleITK's (x, y, z) convention.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import metrics
from .errors import UserInputError
from .protocol import PAIR_SUFFIXES, split_case_name

log = logging.getLogger(__name__)

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SPACING_RTOL = 1e-3
DIRECTION_ATOL = 1e-3
ORIGIN_TOL_VOXELS = 0.1  # NIfTI stores the origin in float32: allow rounding, not a shifted grid


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case; the CT is optional and only used for the lesions' mean HU."""

    name: str
    prediction: Path
    reference: Path
    ct: Path | None = None


@dataclass(frozen=True)
class CaseVolumes:
    """One case in memory: prediction and reference label arrays [z, y, x] on the same grid."""

    name: str
    prediction: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    ct_hu: np.ndarray | None = None


@dataclass(frozen=True)
class CaseResult:
    name: str
    liver: metrics.SegmentationScores
    tumor: metrics.SegmentationScores
    lits: metrics.LitsDetection
    chlebus: metrics.ChlebusDetection
    burden_pred: float
    burden_ref: float
    lesions_ref: tuple[metrics.LesionRow, ...]
    lesions_pred: tuple[metrics.LesionRow, ...]


@dataclass(frozen=True)
class EvaluationResult:
    cases: tuple[CaseResult, ...]
    liver_dice_global: float
    tumor_dice_global: float
    burden_rmse: float


def split_name(path: Path) -> tuple[str, str] | None:
    """(case name, kind) for a volume file, kind 'ct' or 'label' (the naming rules of `protocol.split_case_name`;
    here an unmarked name is a label map); None for anything else (CSV, JSON, ...)."""
    parsed = split_case_name(path)
    return None if parsed is None else (parsed[0], parsed[1] or "label")


def scan_folder(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(label maps, CTs) of a folder, each by case name; two files of one case and kind are an error."""
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder")
    found: dict[str, dict[str, Path]] = {"label": {}, "ct": {}}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        parsed = split_name(path)
        if parsed is None:
            continue
        name, kind = parsed
        if name in found[kind]:
            raise UserInputError(
                f"{found[kind][name].name} and {path.name} in {folder} are both case '{name}'; keep one"
            )
        found[kind][name] = path
    return found["label"], found["ct"]


def pair_folders(pred_dir: str | Path, ref_dir: str | Path) -> list[CaseFiles]:
    """Pairs predictions with references by case name (extension and a label word such as _label/_seg/_pred
    stripped, see `protocol.split_case_name`).

    CTs named *_ct.* or *_0000.* in the reference (else prediction) folder are attached for HU. Every label
    map must have a partner: unpaired files are an error naming them all.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, pred_cts = scan_folder(pred_dir)
    refs, ref_cts = scan_folder(ref_dir)
    if not refs:
        raise UserInputError(f"no reference label maps ({', '.join(PAIR_SUFFIXES)}) in {ref_dir}")
    extra_preds, missing = sorted(preds.keys() - refs.keys()), sorted(refs.keys() - preds.keys())
    problems = []
    if extra_preds:
        names = ", ".join(preds[n].name for n in extra_preds)
        problems.append(f"predictions in {pred_dir} without a reference in {ref_dir}: {names}")
    if missing:
        names = ", ".join(refs[n].name for n in missing)
        problems.append(f"references in {ref_dir} without a prediction in {pred_dir}: {names}")
    if problems:
        raise UserInputError(
            "unpaired files (matched by name without extension and _label/_seg/_pred): " + "; ".join(problems)
        )
    cts = {**pred_cts, **ref_cts}
    return [CaseFiles(name, preds[name], refs[name], cts.get(name)) for name in sorted(refs)]


def _last_line(error: RuntimeError) -> str:
    """SimpleITK errors are multi-line ITK dumps; the last line says what went wrong."""
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def _read(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserInputError(f"cannot read {path}: {_last_line(error)}") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(
            f"{path} is not a scalar 3D volume (dimension {image.GetDimension()}, "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel)"
        )
    return image


def _read_header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UserInputError(f"cannot read {path}: {_last_line(error)}") from error
    return reader


Grid = sitk.Image | sitk.ImageFileReader  # both answer GetSize / GetSpacing / GetDirection / GetOrigin


def _grid_difference(image: Grid, other: Grid) -> str | None:
    spacing, other_spacing = np.array(image.GetSpacing()), np.array(other.GetSpacing())
    if tuple(image.GetSize()) != tuple(other.GetSize()):
        return f"size {tuple(image.GetSize())} vs {tuple(other.GetSize())}"
    if not np.allclose(spacing, other_spacing, rtol=SPACING_RTOL, atol=0):
        return f"spacing {tuple(spacing.round(4).tolist())} vs {tuple(other_spacing.round(4).tolist())} mm"
    if not np.allclose(image.GetDirection(), other.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return f"direction {image.GetDirection()} vs {other.GetDirection()}"
    if np.abs(np.subtract(image.GetOrigin(), other.GetOrigin())).max() > ORIGIN_TOL_VOXELS * spacing.min():
        return f"origin {image.GetOrigin()} vs {other.GetOrigin()} mm"
    return None


def check_same_grid(image: Grid, path: Path, other: Grid, other_path: Path) -> None:
    """Size, spacing (1e-3 relative), direction and origin must agree, else voxels would be compared blindly."""
    difference = _grid_difference(image, other)
    if difference is not None:
        raise UserInputError(
            f"geometry mismatch between {path} and {other_path}: {difference}; both must share one voxel grid "
            "(resample the prediction onto the reference)"
        )


def check_geometry(cases: Iterable[CaseFiles]) -> None:
    """Compares file headers only, so a mismatch in the last case fails before the first is evaluated."""
    for case in cases:
        reference = _read_header(case.reference)
        for path in (case.prediction, case.ct):
            if path is not None:
                check_same_grid(_read_header(path), path, reference, case.reference)


def label_array(image: sitk.Image, path: Path) -> np.ndarray:
    """The label map as uint8 [z, y, x]; values other than 0, 1, 2 are an error naming them."""
    array = sitk.GetArrayFromImage(image)
    bad = (array != 0) & (array != 1) & (array != 2)
    if bad.any():
        values = np.unique(array[bad])
        shown = ", ".join(f"{v:g}" for v in values[:10]) + (", ..." if values.size > 10 else "")
        raise UserInputError(
            f"{path} holds label values outside {{0, 1, 2}} (0 background, 1 liver, 2 tumor): {shown}"
        )
    return array.astype(np.uint8)


def load_case(files: CaseFiles) -> CaseVolumes:
    """Reads and checks one case (labels in {0, 1, 2}, prediction and CT on the reference grid)."""
    reference, prediction = _read(files.reference), _read(files.prediction)
    check_same_grid(prediction, files.prediction, reference, files.reference)
    ct_hu = None
    if files.ct is not None:
        ct = _read(files.ct)
        check_same_grid(ct, files.ct, reference, files.reference)
        ct_hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    return CaseVolumes(
        name=files.name,
        prediction=label_array(prediction, files.prediction),
        reference=label_array(reference, files.reference),
        spacing=reference.GetSpacing(),
        origin=reference.GetOrigin(),
        direction=reference.GetDirection(),
        ct_hu=ct_hu,
    )


def evaluate_case(case: CaseVolumes) -> CaseResult:
    """Scores of one case: liver = label >= 1 (tumor included), tumor = label == 2."""
    pred_liver, ref_liver = (
        case.prediction >= metrics.LIVER_MIN_LABEL,
        case.reference >= metrics.LIVER_MIN_LABEL,
    )
    pred_tumor, ref_tumor = case.prediction == metrics.TUMOR_LABEL, case.reference == metrics.TUMOR_LABEL

    def lesions(label: np.ndarray) -> tuple[metrics.LesionRow, ...]:
        return tuple(metrics.lesion_table(label, case.ct_hu, case.spacing, case.origin, case.direction))

    return CaseResult(
        name=case.name,
        liver=metrics.segmentation_scores(pred_liver, ref_liver, case.spacing),
        tumor=metrics.segmentation_scores(pred_tumor, ref_tumor, case.spacing),
        lits=metrics.lits_detection(pred_tumor, ref_tumor),
        chlebus=metrics.chlebus_detection(pred_tumor, ref_tumor, case.spacing),
        burden_pred=metrics.tumor_burden(case.prediction),
        burden_ref=metrics.tumor_burden(case.reference),
        lesions_ref=lesions(case.reference),
        lesions_pred=lesions(case.prediction),
    )


def evaluate_cases(pairs: Iterable[CaseVolumes]) -> EvaluationResult:
    """Evaluates cases one at a time (pass a generator to keep one case in memory) and pools them."""
    liver, tumor = metrics.DiceAccumulator(), metrics.DiceAccumulator()
    results = []
    for case in pairs:
        log.info("evaluating %s", case.name)
        results.append(evaluate_case(case))
        liver.add(case.prediction >= metrics.LIVER_MIN_LABEL, case.reference >= metrics.LIVER_MIN_LABEL)
        tumor.add(case.prediction == metrics.TUMOR_LABEL, case.reference == metrics.TUMOR_LABEL)
    rmse = metrics.burden_rmse([r.burden_pred for r in results], [r.burden_ref for r in results])
    return EvaluationResult(tuple(results), liver.dice, tumor.dice, rmse)


def _mean(values: Iterable[float]) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


def _row(
    name: str,
    liver: metrics.SegmentationScores,
    tumor: metrics.SegmentationScores,
    lits: metrics.LitsDetection,
    chlebus: metrics.ChlebusDetection,
    n_cases: int,
    burden: tuple[float, float, float],
) -> dict[str, Any]:
    row: dict[str, Any] = {"case": name}
    for structure, scores in (("liver", liver), ("tumor", tumor)):
        row |= {f"{structure}_{key}": value for key, value in dataclasses.asdict(scores).items()}
    return row | {
        "ref_lesions": lits.n_ref,
        "pred_lesions": lits.n_pred,
        "lits_detected": lits.detected,
        "lits_precision": lits.precision,
        "lits_recall": lits.recall,
        "chlebus_tp": chlebus.tp,
        "chlebus_recall": chlebus.recall,
        "chlebus_ref_lesions_10mm": chlebus.n_ref_large,
        "chlebus_tp_10mm": chlebus.tp_large,
        "chlebus_recall_10mm": chlebus.recall_large,
        "chlebus_fp_per_case": chlebus.fp / n_cases if n_cases else float("nan"),
        "chlebus_dice_per_correspondence": _mean(chlebus.dice_per_correspondence),
        "chlebus_merge_errors": chlebus.merge_errors,
        "chlebus_split_errors": chlebus.split_errors,
        "burden_pred": burden[0],
        "burden_ref": burden[1],
        "burden_rmse": burden[2],
    }


def case_row(result: CaseResult) -> dict[str, Any]:
    """One case's scores (distances in mm, NaN where undefined; see liver_e2net.metrics for the policy)."""
    burden = (result.burden_pred, result.burden_ref, float("nan"))
    return _row(result.name, result.liver, result.tumor, result.lits, result.chlebus, 1, burden)


def mean_row(result: EvaluationResult) -> dict[str, Any]:
    """Per-case means of every column, NaN cases skipped."""
    rows = [case_row(case) for case in result.cases]
    return {"case": "mean"} | {key: _mean(row[key] for row in rows) for key in list(global_row(result))[1:]}


def global_row(result: EvaluationResult) -> dict[str, Any]:
    """Scores pooled over all cases: Dice from summed TP/FP/FN, detection from summed counts, FPs per case,
    Dice per correspondence over all hits, burden RMSE; scores that only exist per case are NaN."""
    nan = float("nan")
    lits = metrics.LitsDetection(
        *(sum(getattr(c.lits, f) for c in result.cases) for f in ("n_ref", "n_pred", "detected"))
    )
    chlebus = metrics.ChlebusDetection(
        correspondences=tuple(x for c in result.cases for x in c.chlebus.correspondences),
        ref_diameters_mm=tuple(x for c in result.cases for x in c.chlebus.ref_diameters_mm),
        **{
            f: sum(getattr(c.chlebus, f) for c in result.cases)
            for f in ("n_ref", "n_pred", "tp", "fp", "n_ref_large", "tp_large")
        },
    )
    liver = metrics.SegmentationScores(result.liver_dice_global, nan, nan, nan, nan)
    tumor = metrics.SegmentationScores(result.tumor_dice_global, nan, nan, nan, nan)
    return _row("global", liver, tumor, lits, chlebus, len(result.cases), (nan, nan, result.burden_rmse))


def summary_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """One row per case, then "mean" and "global"."""
    return [case_row(case) for case in result.cases] + [mean_row(result), global_row(result)]


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_csv(result: EvaluationResult, path: Path) -> None:
    """evaluation.csv: one row per case plus "mean" and "global"; undefined values are empty cells."""
    rows = summary_rows(result)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows({key: _csv_value(value) for key, value in row.items()} for row in rows)


def _json_safe(value: Any) -> Any:
    """NaN -> null (strict JSON), tuples -> lists, dataclasses -> dicts."""
    if dataclasses.is_dataclass(value):
        return _json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def to_json(result: EvaluationResult) -> dict[str, Any]:
    """Everything: per-case scores, correspondences, lesion tables, the mean and global rows."""
    cases = [
        {
            "scores": case_row(case),
            "chlebus_correspondences": case.chlebus.correspondences,
            "ref_lesion_diameters_mm": case.chlebus.ref_diameters_mm,
            "lesions_ref": case.lesions_ref,
            "lesions_pred": case.lesions_pred,
        }
        for case in result.cases
    ]
    conventions = {
        "labels": "0 background, 1 liver, 2 tumor; liver = label >= 1, tumor = label == 2",
        "units": "distances and diameters in mm, volumes in ml; lesion centres as (x, y, z) voxel index and LPS mm",
        "lesions": "3D connected components, 26-connectivity",
        "empty_masks": "Dice 1 if both empty, 0 if one is; distances null if either is; rates null without lesions",
        "chlebus_theta": metrics.CHLEBUS_THETA,
        "lits_min_iou": metrics.LITS_MIN_IOU,
    }
    return _json_safe(
        {"conventions": conventions, "cases": cases, "mean": mean_row(result), "global": global_row(result)}
    )


def write_json(result: EvaluationResult, path: Path) -> None:
    path.write_text(json.dumps(to_json(result), indent=2, allow_nan=False) + "\n")


TABLE_COLUMNS = (
    ("case", "case"),
    ("liver_dice", "liver Dice"),
    ("liver_assd_mm", "liver ASSD mm"),
    ("tumor_dice", "tumor Dice"),
    ("tumor_assd_mm", "tumor ASSD mm"),
    ("ref_lesions", "ref lesions"),
    ("pred_lesions", "pred lesions"),
    ("lits_recall", "LiTS recall"),
    ("chlebus_recall", "Chlebus recall"),
    ("chlebus_fp_per_case", "FP/case"),
    ("burden_pred", "burden pred"),
    ("burden_ref", "burden ref"),
    ("burden_rmse", "burden RMSE"),
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(result: EvaluationResult) -> str:
    """Plain-text table with aligned columns: the cases, then "mean" and "global"."""
    cells = [[title for _, title in TABLE_COLUMNS]]
    cells += [[_cell(row[key]) for key, _ in TABLE_COLUMNS] for row in summary_rows(result)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:-2], rule, *lines[-2:]])
