"""`liver-e2net segment` as a user runs it: outputs, JSON progress, STL surfaces, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from core_helpers import REPO, SAMPLE_CT
from liver_e2net.cli import main


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 20:32], str(path))
    return path


def test_segment_writes_seg_nrrd_stl_report_and_jsonl_progress(tmp_path, model, small_ct) -> None:
    out = tmp_path / "result.seg.nrrd"
    command = [
        sys.executable,
        "-m",
        "liver_e2net",
        "segment",
        str(small_ct),
        "-o",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--stl",
        str(tmp_path / "stl"),
        "--report",
        str(tmp_path / "r.json"),
        "--probabilities",
        str(tmp_path / "p.nrrd"),
        "--progress",
        "jsonl",
        "--precision",
        "fp32",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    fractions = [line["fraction"] for line in lines]
    assert fractions == sorted(fractions) and lines[-1]["stage"] == "done"
    assert {"stage1", "stage2", "write"} <= {line["stage"] for line in lines}
    label = sitk.ReadImage(str(out))
    ct = sitk.ReadImage(str(small_ct))
    assert label.GetSize() == ct.GetSize() and label.GetSpacing() == ct.GetSpacing()
    assert (
        label.GetMetaData("Segment0_Name") == "Liver" and label.GetMetaData("Segment1_Name") == "Liver tumor"
    )
    report = json.loads((tmp_path / "r.json").read_text())
    liver_voxels = int((sitk.GetArrayFromImage(label) >= 1).sum())
    assert report["liver_ml"] == pytest.approx(liver_voxels * np.prod(ct.GetSpacing()) / 1000, rel=1e-3)
    assert report["precision"] == "float32"  # as asked, whatever this CPU's auto would be
    assert sitk.ReadImage(str(tmp_path / "p.nrrd")).GetNumberOfComponentsPerPixel() == 2
    stl = tmp_path / "stl" / "Liver_LPS.stl"
    assert stl.exists() and stl.stat().st_size > 1000
    assert not [p for p in tmp_path.rglob(".*tmp")]  # no temporary files left


def test_a_reader_that_goes_away_ends_the_run_cleanly(tmp_path, model, small_ct) -> None:
    """The panel or `| head` closes stdout after one progress line: a named error, status 1, no output left."""
    out = tmp_path / "result.seg.nrrd"
    command = [sys.executable, "-m", "liver_e2net", "segment", str(small_ct), "-o", str(out), "--model", str(model),
               "--device", "cpu", "--threads", "1", "--progress", "jsonl"]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert json.loads(child.stdout.readline())["stage"] == "load"
    child.stdout.close()
    assert child.wait(timeout=300) == 1
    assert "stdout was closed before the run ended" in child.stderr.read()
    assert list(tmp_path.iterdir()) == []


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), vector: bool = False) -> Path:
    image = sitk.GetImageFromArray(array, isVector=vector)
    if not vector and array.ndim == 3:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _run_main(capsys, *args) -> tuple[int, str]:
    code = main(["segment", *map(str, args), "--device", "cpu", "--progress", "none"])
    return code, capsys.readouterr().err


BAD_CT = {
    "2d": (lambda: np.full((64, 64), -1000, np.int16), False, "2D image"),
    "rgb": (lambda: np.zeros((4, 32, 32, 3), np.uint8), True, "components per voxel"),
    "mri": (
        lambda: np.random.default_rng(0).integers(0, 4000, (8, 32, 32)).astype(np.int16),
        False,
        "does not look like CT",
    ),
    "constant": (lambda: np.full((8, 32, 32), -1000, np.int16), False, "constant"),
    "absurd": (
        lambda: np.full((8, 32, 32), 60000, np.float32) - np.eye(32, dtype=np.float32)[None] * 70000,
        False,
        "outside any CT",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CT))
def test_bad_ct_is_refused_with_a_message(tmp_path, capsys, model, case) -> None:
    make, vector, message = BAD_CT[case]
    path = _write(tmp_path / f"{case}.nrrd", make(), vector=vector)
    out = tmp_path / "out.nii.gz"
    code, err = _run_main(capsys, path, "-o", out, "--model", model)
    assert code == 2
    assert message in err and str(path) in err
    assert not out.exists()


def test_missing_input(tmp_path, capsys, model) -> None:
    code, err = _run_main(capsys, tmp_path / "nothing.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", model)
    assert code == 2 and "input not found" in err


def test_missing_and_corrupt_model(tmp_path, capsys, small_ct) -> None:
    code, err = _run_main(capsys, small_ct, "-o", tmp_path / "o.nii.gz", "--model", tmp_path / "none.pt")
    assert code == 2 and "model file not found" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model")
    code, err = _run_main(capsys, small_ct, "-o", tmp_path / "o.nii.gz", "--model", corrupt)
    assert code == 2 and "not a readable" in err
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, capsys, model, small_ct) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = _run_main(capsys, small_ct, "-o", locked / "o.nii.gz", "--model", model)
    assert code == 2 and "cannot write" in err


def test_output_that_is_a_file_path_through_a_file(tmp_path, capsys, model, small_ct) -> None:
    """An output 'folder' that is really a file cannot be written (works as root too)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run_main(capsys, small_ct, "-o", blocker / "o.nii.gz", "--model", model)
    assert code == 2 and "cannot write" in err


def test_unknown_output_type(tmp_path, capsys, model, small_ct) -> None:
    code, err = _run_main(capsys, small_ct, "-o", tmp_path / "o.png", "--model", model)
    assert code == 2 and "unsupported output file type" in err


def test_unavailable_cuda_device(tmp_path, capsys, model, small_ct) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    code = main(
        [
            "segment",
            str(small_ct),
            "-o",
            str(tmp_path / "o.nii.gz"),
            "--model",
            str(model),
            "--device",
            "cuda",
            "--progress",
            "none",
        ]
    )
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_info_prints_model_and_device(capsys, model) -> None:
    assert main(["info", "--model", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["config"]["name"] == "lite" and info["threads"] >= 1
