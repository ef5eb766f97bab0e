"""Folder pairing, file checks, evaluation and the `evaluate` command on small NIfTI files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from liver_e2net import cli, evaluation, metrics
from liver_e2net.errors import UserInputError
from scipy import ndimage

SPACING = (0.8, 0.8, 2.0)  # (x, y, z) mm
REAL_LABEL = Path("/work/shared/data/case01_label.nii.gz")


def write_volume(path: Path, array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def reference_label() -> np.ndarray:
    """Liver box with two 4x4x4 tumors, [z, y, x]."""
    label = np.zeros((8, 20, 30), dtype=np.uint8)
    label[1:7, 2:18, 2:28] = 1
    label[2:6, 4:8, 4:8] = 2
    label[2:6, 4:8, 18:22] = 2
    return label


def prediction_label() -> np.ndarray:
    """First tumor exact, second missed (liver there), one false-positive tumor; liver one slice short."""
    label = reference_label()
    label[2:6, 4:8, 18:22] = 1
    label[2:4, 12:14, 12:14] = 2
    label[6] = 0
    return label


def run_cli(monkeypatch, *args: str) -> int:
    return cli.main(["evaluate", *map(str, args)])


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    write_volume(ref_dir / "case01_label.nii.gz", reference_label())
    write_volume(ref_dir / "case01_ct.nii.gz", np.full(reference_label().shape, 60, dtype=np.int16))
    write_volume(pred_dir / "case01_pred.nii.gz", prediction_label())
    write_volume(ref_dir / "case02.nii.gz", reference_label())
    write_volume(pred_dir / "case02_seg.nii.gz", reference_label())
    (pred_dir / "notes.txt").write_text("not a volume")
    return pred_dir, ref_dir


def test_split_name_strips_extensions_and_suffixes():
    assert evaluation.split_name(Path("case01_label.nii.gz")) == ("case01", "label")
    assert evaluation.split_name(Path("case01_pred.seg.nrrd")) == ("case01", "label")
    assert evaluation.split_name(Path("case01.mha")) == ("case01", "label")
    assert evaluation.split_name(Path("liver_7_seg.nii")) == ("liver_7", "label")
    assert evaluation.split_name(Path("case01_ct.nrrd")) == ("case01", "ct")
    assert evaluation.split_name(Path("evaluation.csv")) is None


def test_pair_folders_matches_by_case_and_attaches_ct(folders):
    pred_dir, ref_dir = folders
    cases = evaluation.pair_folders(pred_dir, ref_dir)
    assert [(c.name, c.prediction.name, c.reference.name, c.ct and c.ct.name) for c in cases] == [
        ("case01", "case01_pred.nii.gz", "case01_label.nii.gz", "case01_ct.nii.gz"),
        ("case02", "case02_seg.nii.gz", "case02.nii.gz", None),
    ]


def test_pair_folders_names_unpaired_files(folders):
    pred_dir, ref_dir = folders
    write_volume(pred_dir / "case03_pred.nii.gz", reference_label())
    (ref_dir / "case02.nii.gz").rename(ref_dir / "case09.nii.gz")
    with pytest.raises(UserInputError) as error:
        evaluation.pair_folders(pred_dir, ref_dir)
    message = str(error.value)
    assert "case02_seg.nii.gz" in message and "case03_pred.nii.gz" in message and "case09.nii.gz" in message


def test_two_files_of_one_case_are_refused(folders):
    pred_dir, ref_dir = folders
    write_volume(pred_dir / "case01.nii.gz", reference_label())
    with pytest.raises(UserInputError, match="case01.nii.gz and case01_pred.nii.gz"):
        evaluation.pair_folders(pred_dir, ref_dir)


def test_evaluate_cases_per_case_mean_and_global():
    ref = reference_label()
    cases = [
        evaluation.CaseVolumes("a", prediction_label(), ref, SPACING),
        evaluation.CaseVolumes("b", ref, ref, SPACING),
    ]
    result = evaluation.evaluate_cases(cases)
    a, b = result.cases
    assert a.tumor.dice == pytest.approx(2 * 64 / (64 + 8 + 128))  # one of two tumors, plus an 8-voxel FP
    assert (a.lits.detected, a.lits.n_pred, a.chlebus.tp, a.chlebus.fp) == (1, 2, 1, 1)
    assert b.tumor.dice == 1.0 and b.liver.assd_mm == 0.0 and b.chlebus.recall == 1.0
    assert result.tumor_dice_global == pytest.approx(2 * 192 / (72 + 128 + 256))
    mean, pooled = evaluation.mean_row(result), evaluation.global_row(result)
    assert mean["tumor_dice"] == pytest.approx((a.tumor.dice + 1.0) / 2)
    assert pooled["tumor_dice"] == pytest.approx(result.tumor_dice_global)
    assert pooled["chlebus_recall"] == pytest.approx(3 / 4) and pooled["chlebus_fp_per_case"] == 0.5
    assert pooled["lits_precision"] == pytest.approx(3 / 4)
    liver = 6 * 16 * 26
    burdens = (72 / (liver - 16 * 26), 128 / liver)  # the FP tumor counts too
    assert a.burden_pred == pytest.approx(burdens[0]) and a.burden_ref == pytest.approx(burdens[1])
    assert result.burden_rmse == pytest.approx(abs(burdens[0] - burdens[1]) / math.sqrt(2))
    assert math.isnan(pooled["tumor_assd_mm"])
    assert a.lesions_ref[1].centre_ijk == pytest.approx((19.5, 5.5, 3.5))


def test_evaluate_command_writes_csv_json_and_table(folders, monkeypatch, capsys):
    pred_dir, ref_dir = folders
    assert run_cli(monkeypatch, "--pred", pred_dir, "--ref", ref_dir) == 0
    table = capsys.readouterr().out
    assert "liver Dice" in table and "global" in table
    rows = list(csv.DictReader(open(pred_dir / "evaluation.csv")))
    assert [r["case"] for r in rows] == ["case01", "case02", "mean", "global"]
    assert float(rows[0]["tumor_dice"]) == pytest.approx(2 * 64 / 200, abs=1e-5)
    assert float(rows[0]["lits_recall"]) == 0.5 and float(rows[1]["liver_dice"]) == 1.0
    assert rows[3]["liver_assd_mm"] == "" and float(rows[3]["burden_rmse"]) > 0
    report = json.loads((pred_dir / "evaluation.json").read_text())
    first = report["cases"][0]
    assert [lesion["mean_hu"] for lesion in first["lesions_ref"]] == [60.0, 60.0]  # from case01_ct
    assert first["lesions_pred"][0]["largest_axial_diameter_mm"] > 0
    assert len(first["chlebus_correspondences"]) == 3  # hit, miss, false positive
    assert report["cases"][1]["lesions_ref"][0]["mean_hu"] is None  # no CT for case02
    assert report["global"]["chlebus_recall"] == pytest.approx(0.75)


def test_evaluate_command_output_folder(folders, tmp_path, monkeypatch, capsys):
    pred_dir, ref_dir = folders
    out = tmp_path / "new" / "out"
    assert run_cli(monkeypatch, "--pred", pred_dir, "--ref", ref_dir, "-o", out) == 0
    assert (out / "evaluation.csv").is_file() and (out / "evaluation.json").is_file()


def expect_error(monkeypatch, capsys, *args) -> str:
    assert run_cli(monkeypatch, *args) == 2
    return capsys.readouterr().err


def test_evaluate_command_unpaired_files(folders, monkeypatch, capsys):
    pred_dir, ref_dir = folders
    (pred_dir / "case02_seg.nii.gz").unlink()
    message = expect_error(monkeypatch, capsys, "--pred", pred_dir, "--ref", ref_dir)
    assert "unpaired" in message and "case02.nii.gz" in message


def test_evaluate_command_geometry_mismatch(folders, monkeypatch, capsys):
    pred_dir, ref_dir = folders
    write_volume(pred_dir / "case02_seg.nii.gz", reference_label(), spacing=(0.8, 0.8, 2.5))
    message = expect_error(monkeypatch, capsys, "--pred", pred_dir, "--ref", ref_dir)
    assert "geometry mismatch" in message and "case02_seg.nii.gz" in message and "case02.nii.gz" in message
    write_volume(pred_dir / "case02_seg.nii.gz", reference_label()[:, :, :-1])
    assert "size" in expect_error(monkeypatch, capsys, "--pred", pred_dir, "--ref", ref_dir)
    write_volume(pred_dir / "case02_seg.nii.gz", reference_label(), origin=(0.0, 0.0, 2.0))  # one slice off
    assert "origin" in expect_error(monkeypatch, capsys, "--pred", pred_dir, "--ref", ref_dir)


def test_load_case_checks_the_ct_grid(folders):
    pred_dir, ref_dir = folders
    ct = write_volume(ref_dir / "case01_ct.nii.gz", np.zeros((8, 20, 30), np.int16), spacing=(0.7, 0.8, 2.0))
    case = evaluation.CaseFiles(
        "case01", pred_dir / "case01_pred.nii.gz", ref_dir / "case01_label.nii.gz", ct
    )
    with pytest.raises(UserInputError, match="case01_ct.nii.gz.*case01_label.nii.gz"):
        evaluation.load_case(case)


def test_evaluate_command_labels_outside_0_1_2(folders, monkeypatch, capsys):
    pred_dir, ref_dir = folders
    bad = reference_label()
    bad[0, 0, 0:2] = (5, 255)
    write_volume(pred_dir / "case02_seg.nii.gz", bad)
    message = expect_error(monkeypatch, capsys, "--pred", pred_dir, "--ref", ref_dir)
    assert "case02_seg.nii.gz" in message and "5, 255" in message


def test_evaluate_command_unwritable_output(folders, tmp_path, monkeypatch, capsys):
    pred_dir, ref_dir = folders
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = expect_error(monkeypatch, capsys, "--pred", pred_dir, "--ref", ref_dir, "-o", blocker / "out")
    assert "cannot create output folder" in message and str(blocker) in message


def test_evaluate_command_needs_both_folders(monkeypatch, capsys, tmp_path):
    assert "--ref" in expect_error(monkeypatch, capsys, "--pred", tmp_path)
    assert "-o" in expect_error(monkeypatch, capsys, "--model", "lite", "--data", tmp_path)


def test_evaluate_command_segments_then_evaluates(tmp_path, monkeypatch, capsys):
    """--model --data: the real pipeline (small random lite model) segments each CT, then the table is computed
    from what it wrote."""
    from core_helpers import SAMPLE_CT, SAMPLE_LABEL, biased_checkpoint
    from liver_e2net.checkpoint import save_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 20:30], str(data / "sample_ct.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_LABEL))[:, :, 20:30], str(data / "sample_label.nii.gz"))
    model = save_checkpoint(biased_checkpoint(liver_bias=0.5), tmp_path / "model.pt")
    out = tmp_path / "out"
    assert run_cli(monkeypatch, "--model", model, "--data", data, "-o", out) == 0
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "sample_pred.nii.gz")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "sample_label.nii.gz")))
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert rows[0]["case"] == "sample"
    assert float(rows[0]["liver_dice"]) == pytest.approx(metrics.dice(prediction >= 1, reference >= 1), abs=1e-5)


@pytest.fixture(scope="module")
def real_case() -> evaluation.CaseVolumes:
    """case01 (2 real tumors) downsampled 4x in-plane and 2x in z so the test stays fast."""
    if not REAL_LABEL.is_file():
        pytest.skip(f"{REAL_LABEL} not available")
    image = sitk.ReadImage(str(REAL_LABEL))
    label = sitk.GetArrayFromImage(image)[::2, ::4, ::4]
    spacing = tuple(s * f for s, f in zip(image.GetSpacing(), (4, 4, 2), strict=True))
    return evaluation.CaseVolumes("case01", label, label, spacing, image.GetOrigin(), image.GetDirection())


def test_real_reference_against_itself(real_case):
    result = evaluation.evaluate_case(real_case)
    assert result.liver.dice == 1.0 and result.tumor.dice == 1.0
    assert result.liver.assd_mm == 0.0 and result.tumor.msd_mm == 0.0
    assert (result.lits.n_ref, result.lits.detected, result.chlebus.tp, result.chlebus.fp) == (2, 2, 2, 0)
    assert result.chlebus.n_ref_large == 2  # both real tumors are several cm across
    assert result.burden_pred == result.burden_ref == pytest.approx(metrics.tumor_burden(real_case.reference))


def test_real_reference_against_eroded_copy(real_case):
    ref = real_case.reference
    eroded = np.where(ndimage.binary_erosion(ref >= 1), ref, 0).astype(np.uint8)
    case = evaluation.CaseVolumes("eroded", eroded, ref, real_case.spacing)
    result = evaluation.evaluate_case(case)
    assert 0.8 < result.liver.dice < 1.0
    assert min(real_case.spacing) / 2 < result.liver.assd_mm < 2 * max(real_case.spacing)  # one voxel shell
    assert result.liver.rvd < 0 and result.chlebus.tp == 2
