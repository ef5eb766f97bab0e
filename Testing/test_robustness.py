"""Detection-vs-size report: real pipeline, real synthetic tumors, on a real liver."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from core_helpers import biased_checkpoint, shared_case
from liver_e2net.checkpoint import save_checkpoint
from liver_e2net.cli import main
from liver_e2net.pipeline import Segmenter
from liver_e2net.robustness import synthetic_tumor_trial, trial_tumor_config
from liver_e2net.training.synthetic_tumors import insert_tumors


def _case02():
    ct = sitk.ReadImage(str(shared_case("case02_ct.nii.gz")))
    label = sitk.ReadImage(str(shared_case("case02_label.nii.gz")))
    return ct, label


def test_a_model_that_finds_no_tumor_detects_nothing() -> None:
    ct, label = _case02()
    segmenter = Segmenter(biased_checkpoint(liver_bias=5.0, tumor_bias=-30.0), device="cpu")
    detected, tumor_dice, false_positives = synthetic_tumor_trial(
        segmenter, ct, sitk.GetArrayFromImage(label), 15.0, seed=1
    )
    assert (detected, tumor_dice, false_positives) == (False, 0.0, 0)


def test_robustness_command_writes_table_json_and_plot(tmp_path, capsys) -> None:
    ct, label = _case02()
    sitk.WriteImage(ct[:, :, 4:16], str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(label[:, :, 4:16], str(tmp_path / "label.nii.gz"))
    model = save_checkpoint(biased_checkpoint(liver_bias=5.0, tumor_bias=-30.0), tmp_path / "m.pt")
    code = main(
        [
            "robustness",
            str(tmp_path / "ct.nii.gz"),
            str(tmp_path / "label.nii.gz"),
            "--model",
            str(model),
            "--sizes",
            "6",
            "12",
            "--seeds",
            "1",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "rob"),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "rob.json").read_text())
    assert [row["diameter_mm"] for row in report["rows"]] == [6.0, 12.0]
    assert all(row["trials"] == 1 and row["detection_rate"] == 0.0 for row in report["rows"])
    assert (tmp_path / "rob.png").stat().st_size > 1000
    assert "diameter mm" in capsys.readouterr().out


def test_a_label_without_liver_is_refused(tmp_path, capsys) -> None:
    ct, label = _case02()
    sitk.WriteImage(ct[:, :, :4], str(tmp_path / "ct.nii.gz"))
    empty = sitk.Image(label[:, :, :4])
    empty = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(empty).shape, np.uint8))
    empty.CopyInformation(ct[:, :, :4])
    sitk.WriteImage(empty, str(tmp_path / "label.nii.gz"))
    assert (
        main(["robustness", str(tmp_path / "ct.nii.gz"), str(tmp_path / "label.nii.gz"), "--model", "x.pt"])
        == 2
    )
    assert "no liver" in capsys.readouterr().err


def test_trial_tumors_keep_sharp_margins_whatever_the_generator_now_draws_by_default() -> None:
    """Figures of models measured months apart compare only if the trial's tumors stay the same kind."""
    ct, label = _case02()
    array, liver = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(label)
    margins = [
        insert_tumors(array, liver, ct.GetSpacing(), np.random.default_rng(seed), trial_tumor_config(12.0))[2][0].margin_mm
        for seed in range(8)
    ]
    assert margins == [0.0] * 8


def test_an_unwritable_output_is_refused_before_any_trial(tmp_path, capsys) -> None:
    ct, label = _case02()
    sitk.WriteImage(ct[:, :, 4:8], str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(label[:, :, 4:8], str(tmp_path / "label.nii.gz"))
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should be")
    code = main(
        ["robustness", str(tmp_path / "ct.nii.gz"), str(tmp_path / "label.nii.gz"), "--model", "x.pt",
         "--threads", "0", "-o", str(blocker / "rob")]  # fmt: skip
    )
    assert code == 2 and "--threads 0" in capsys.readouterr().err
    code = main(
        ["robustness", str(tmp_path / "ct.nii.gz"), str(tmp_path / "label.nii.gz"), "--model", "x.pt",
         "-o", str(blocker / "rob")]  # fmt: skip
    )
    assert code == 2 and "is not a writable folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "label.nii.gz", "taken"]


def test_a_report_that_cannot_be_written_leaves_no_file_and_exits_2(tmp_path) -> None:
    """A file size limit makes the JSON write fail as a full disk does: neither file is left, no traceback."""
    ct, label = _case02()
    sitk.WriteImage(ct[:, :, 4:16], str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(label[:, :, 4:16], str(tmp_path / "label.nii.gz"))
    model = save_checkpoint(biased_checkpoint(liver_bias=5.0, tumor_bias=-30.0), tmp_path / "m.pt")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "liver_e2net", "robustness", str(tmp_path / "ct.nii.gz"), str(tmp_path / "label.nii.gz"),
         "--model", str(model), "--sizes", "12", "--seeds", "1", "--device", "cpu", "--threads", "1",
         "--progress", "none", "-o", str(out / "rob")],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)),  # the JSON takes ~480 bytes
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot write {out / 'rob.json'}" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or list(out.iterdir()) == []
