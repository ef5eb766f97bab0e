"""`liver-e2net check-data` on real files written here: pairs found as `train` finds them, each read by train's own
readers, every bad file named with its problem, the exit code, the JSON and the panel's line protocol."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from liver_e2net import cli
from liver_e2net.errors import UserInputError
from liver_e2net.protocol import PAIR_KEYS, UNPAIRED_KEYS
from liver_e2net.training.cache import prepare_usable_cases
from liver_e2net.training.sources import discover, find_pairs

SPACING = (1.5, 1.5, 3.0)  # (x, y, z) mm


def ct_and_label() -> tuple[np.ndarray, np.ndarray]:
    """[z, y, x]: air around a 40 HU body holding a 110 HU liver block with a 50 HU tumor in it."""
    ct = np.full((6, 32, 32), -1000, np.int16)
    ct[:, 4:28, 4:28] = 40
    label = np.zeros(ct.shape, np.uint8)
    label[1:5, 8:24, 8:20] = 1
    label[2:4, 12:16, 12:16] = 2
    ct[label == 1], ct[label == 2] = 110, 50
    return ct, label


def write(array: np.ndarray, path, spacing=SPACING):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    """Two good pairs (one without tumor), three bad ones, and a CT without a label."""
    folder = tmp_path / "cases"
    folder.mkdir()
    ct, label = ct_and_label()
    for name in ("good", "plain", "empty", "values", "grid", "lonely"):
        write(ct, folder / f"{name}_ct.nii.gz")
    write(label, folder / "good_label.nii.gz")
    write(np.minimum(label, 1), folder / "plain_label.nii.gz")
    write(np.zeros_like(label), folder / "empty_label.nii.gz")  # no liver
    write(label * 127, folder / "values_label.nii.gz")  # 0/127/254 instead of 0/1/2
    write(label, folder / "grid_label.nii.gz", spacing=(1.0, 1.0, 3.0))  # not the CT's grid
    (folder / "notes.txt").write_text("not a volume")
    return folder


def check_data(capsys, *arguments) -> tuple[int, str, str]:
    code = cli.main(["check-data", *map(str, arguments)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_bad_pair_and_unpaired_file_is_named_with_its_problem(folder, capsys):
    code, out, err = check_data(capsys, "--data", folder, "--json", "--progress", "none")
    assert code == 2
    answer = json.loads(out)
    pairs = {pair["name"]: pair for pair in answer["pairs"]}
    assert sorted(pairs) == ["empty", "good", "grid", "plain", "values"] and answer["usable"] == 2
    assert all(tuple(pair) == PAIR_KEYS for pair in answer["pairs"])
    assert all(tuple(record) == UNPAIRED_KEYS for record in answer["unpaired"])
    assert pairs["good"] == {"name": "good", "image": str(folder / "good_ct.nii.gz"),
                             "label": str(folder / "good_label.nii.gz"), "slices": 6, "tumor": True, "problem": "",
                             "warning": ""}  # fmt: skip
    assert (pairs["plain"]["tumor"], pairs["plain"]["problem"]) == (False, "")
    expected = {
        "empty": "has no liver",
        "values": "label values 127, 254 outside",
        "grid": "does not lie on its CT's grid",
    }
    for name, problem in expected.items():
        assert problem in pairs[name]["problem"] and f"{name}_label.nii.gz" in pairs[name]["problem"], pairs[
            name
        ]
    assert answer["unpaired"] == [{"name": "lonely_ct.nii.gz", "file": str(folder / "lonely_ct.nii.gz"),
                                   "problem": "no label file with the same case name; name them NAME_ct.nii.gz and "
                                              "NAME_label.nii.gz"}]  # fmt: skip
    # Two usable pairs, but `train --data` refuses a folder with a file that pairs with nothing: so does check-data.
    assert err.startswith("liver-e2net check-data: error: train --data refuses files that pair with nothing")
    assert "lonely_ct.nii.gz" in err and "Traceback" not in err
    with pytest.raises(UserInputError, match="lonely_ct.nii.gz"):
        discover(folder)


def test_the_usable_pairs_are_the_ones_train_keeps(folder, tmp_path, capsys):
    (folder / "lonely_ct.nii.gz").unlink()
    code, out, err = check_data(capsys, "--data", folder, "--progress", "none")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["case", "slices", "tumor", "files", "status"]
    assert lines[2].split() == ["good", "6", "yes", "good_ct.nii.gz", "+", "good_label.nii.gz", "ok"]
    assert lines[-1] == "2 of 5 pairs usable (1 with tumor)"
    assert any(line.startswith("values ") and "skipped: " in line for line in lines)
    cases, skipped = prepare_usable_cases(discover(folder), tmp_path / "cache")  # what `train` does with them
    assert sorted(case.name for case in cases) == ["good", "plain"] and sorted(skipped) == [
        "empty",
        "grid",
        "values",
    ]


def test_too_few_usable_pairs_names_the_files_and_what_to_do(tmp_path, capsys):
    ct, label = ct_and_label()
    write(ct, tmp_path / "a_ct.nii.gz")
    write(label, tmp_path / "a_label.nii.gz")
    write(ct, tmp_path / "b_ct.nii.gz")
    write(np.where(label > 0, 2, 0).astype(np.uint8), tmp_path / "b_label.nii.gz")  # tumor only: no liver
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"image": "a_ct.nii.gz", "label": "a_label.nii.gz", "from": "ignored"}]))
    code, out, err = check_data(
        capsys, "--data", listing, "--case", tmp_path / "b_ct.nii.gz", tmp_path / "b_label.nii.gz", "--json"
    )
    assert code == 2
    pairs = [(pair["name"], bool(pair["problem"])) for pair in json.loads(out)["pairs"]]
    assert pairs == [("a_ct", False), ("b", True)]  # a list entry without "name" is named after its CT file
    assert "1 usable CT + label pair, but training needs at least 2" in err
    assert "b: " in err and "b_label.nii.gz has only tumor voxels (value 2), no liver (value 1)" in err
    assert "add pairs with --data or --case" in err


def test_missing_data_is_one_message_and_no_traceback(tmp_path, capsys):
    code, out, err = check_data(capsys, "--data", tmp_path / "nowhere")
    assert (code, out) == (
        2,
        "",
    ) and err == f"liver-e2net check-data: error: training data not found: {tmp_path / 'nowhere'}\n"
    code, out, err = check_data(capsys)
    assert code == 2 and "--data DIR_OR_JSON and/or --case CT LABEL" in err


def test_the_panels_line_protocol_from_a_real_child(folder):
    """What the training panel reads: one "check" line per pair and per unpaired file, then the error line."""
    done = subprocess.run([sys.executable, "-m", "liver_e2net", "check-data", "--data", str(folder), "--progress",
                           "jsonl"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [record["stage"] for record in records] == ["check"] * 6 + ["error"]
    assert [record.get("name") for record in records[:6]] == ["empty", "good", "grid", "plain", "values",
                                                              "lonely_ct.nii.gz"]  # fmt: skip
    assert records[1]["fraction"] == 0.4 and (records[1]["index"], records[1]["total"]) == (2, 5)
    assert "lonely_ct.nii.gz" in records[-1]["message"]


def test_train_data_takes_a_flat_folder_and_nnunet_folders_too(folder, tmp_path):
    (folder / "lonely_ct.nii.gz").unlink()
    assert [case.name for case in discover(folder)] == ["empty", "good", "grid", "plain", "values"]
    nnunet = tmp_path / "nnunet"
    (nnunet / "imagesTr").mkdir(parents=True)
    (nnunet / "labelsTr").mkdir()
    (folder / "good_ct.nii.gz").rename(nnunet / "imagesTr" / "good_0000.nii.gz")
    (folder / "good_label.nii.gz").rename(nnunet / "labelsTr" / "good.nii.gz")
    (folder / "plain_ct.nii.gz").rename(nnunet / "imagesTr" / "plain_0000.nii.gz")
    cases, unpaired = find_pairs(nnunet)
    assert [case.name for case in cases] == ["good"]
    assert [(path.name, problem.split(";")[0]) for path, problem in unpaired] == [
        ("plain_0000.nii.gz", "no label plain.ext in labelsTr/")
    ]
