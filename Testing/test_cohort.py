"""`liver-e2net segment-batch`: discovery, the cohort table, resume after a kill, and every bad input it names."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from core_helpers import REPO, SAMPLE_CT, biased_checkpoint, shared_case
from liver_e2net import cli, outputs
from liver_e2net.checkpoint import save_checkpoint
from liver_e2net.cohort import runner
from liver_e2net.cohort.discovery import discover
from liver_e2net.cohort.sharding import Shard
from liver_e2net.cohort.table import read_table
from liver_e2net.nifti_integrity import nifti_problem


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return save_checkpoint(
        biased_checkpoint(liver_bias=0.6, tumor_bias=0.3, seed=1), tmp_path_factory.mktemp("m") / "m2.pt"
    )


@pytest.fixture()
def batch(monkeypatch, capsys, caplog):
    """Runs segment-batch in this process: (exit code, stdout, stderr and log)."""
    caplog.set_level("INFO", logger="liver_e2net")

    def run(*args) -> tuple[int, str, str]:
        caplog.clear()
        code = cli.main(
            ["segment-batch", *map(str, args), "--device", "cpu", "--threads", "1", "--progress", "none"]
        )
        out, err = capsys.readouterr()
        return code, out, err + caplog.text

    return run


def small_ct(path: Path, z: slice = slice(20, 32)) -> Path:
    """12 slices of the 3 mm TotalSegmentator CT (122x101): a real CT that runs in about a second."""
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, z], str(path), useCompression=True)
    return path


def rows_by_case(table: Path) -> dict[str, dict[str, str]]:
    return {row["case"] or row["source"]: row for row in read_table(table)}


def test_discovery_walks_folders_reads_csv_renames_duplicates_and_ignores_other_files(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(tmp_path / folder / "ct.nii.gz"))
    (tmp_path / "a" / "seg.seg.nrrd").write_text("not a CT")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(tmp_path / "c.nrrd"))
    (tmp_path / "list.csv").write_text("case,path\nfirst,c.nrrd\nagain,a/ct.nii.gz\ngone,missing.nii.gz\n")
    found = discover(
        [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "list.csv")], exclude=tmp_path / "out"
    )
    names = {case.name: case for case in found.cases}
    assert set(names) == {"a_ct", "b_ct", "first", "gone"}
    assert names["gone"].problem.startswith("input not found") and "list.csv" in names["gone"].problem
    assert [Path(p).name for p in found.ignored] == ["notes.txt", "seg.seg.nrrd"]
    assert any("renamed" in note for note in found.notes) and any("more than once" in n for n in found.notes)
    only_b = discover([str(tmp_path)], pattern="nothing*", exclude=tmp_path / "out")
    assert not only_b.cases


def test_shard_takes_every_worlds_nth_case_and_reads_torchrun_environment() -> None:
    shard = Shard.from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "3"})
    assert shard.take(list(range(8))) == [1, 4, 7] and shard.distributed
    assert Shard.from_env({}) == Shard() and Shard().take([1, 2]) == [1, 2]
    with pytest.raises(ValueError):
        Shard.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    slices = [
        119,
        20,
        53,
        3,
        151,
        41,
    ]  # the real CTs of ../shared/data: i % 2 would give rank 0 323 of 387 slices
    shares = [Shard(rank, 2).take(list(range(6)), slices) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(6)) and shares == [[3, 4, 5], [0, 1, 2]]
    assert abs(sum(slices[i] for i in shares[0]) - sum(slices[i] for i in shares[1])) <= 3


def test_cut_short_nifti_is_caught_although_simpleitk_reads_it(tmp_path) -> None:
    source = small_ct(tmp_path / "ct.nii.gz")
    raw = tmp_path / "ct.nii"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(raw))
    assert nifti_problem(source) == "" and nifti_problem(raw) == ""
    for path in (source, raw):
        cut = tmp_path / f"cut_{path.name}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        sitk.ReadImage(str(cut))  # no error from SimpleITK: the reason for the check
        assert "cut short" in nifti_problem(cut)


def test_batch_of_real_cases_with_a_corrupt_file_and_a_non_ct_image(tmp_path, batch, model) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    small_ct(inputs / "case03_ct.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(shared_case("case04_ct.nii.gz"))), str(inputs / "case04_ct.nrrd"))
    (inputs / "corrupt_ct.nii.gz").write_bytes(shared_case("case02_ct.nii.gz").read_bytes()[:20000])
    sitk.WriteImage(
        sitk.ReadImage(str(shared_case("case03_label.nii.gz"))), str(inputs / "case03_label.nii.gz")
    )
    (inputs / "README.md").write_text("not an image")
    out = tmp_path / "out"
    code, stdout, stderr = batch(
        inputs, "-o", out, "--model", model, "--format", "nifti", "seg.nrrd", "--stl"
    )
    assert code == 0, stderr
    rows = rows_by_case(out / "cohort.csv")
    assert {name: row["status"] for name, row in rows.items()} == {
        "case03_ct": "done",
        "case04_ct": "done",
        "corrupt_ct": "failed",
        "case03_label": "failed",
    }
    assert "cut short" in rows["corrupt_ct"]["message"]
    assert "does not look like CT" in rows["case03_label"]["message"]
    assert "README.md" in stderr and "2 failed" in stdout
    record = json.loads((out / "case03_ct" / "case.json").read_text())
    label = sitk.ReadImage(str(out / "case03_ct" / "label.nii.gz"))
    voxel_ml = np.prod(label.GetSpacing()) / 1000
    assert record["liver_ml"] == pytest.approx(
        (sitk.GetArrayFromImage(label) >= 1).sum() * voxel_ml, abs=0.01
    )
    assert record["lesion_count"] == len(record["lesions"]) and record["model"]["fingerprint"]
    assert {"tumor_ml", "tumor_burden_percent", "seconds", "warnings"} <= set(record)
    assert sitk.ReadImage(str(out / "case04_ct" / "label.seg.nrrd")).GetMetaData("Segment0_Name") == "Liver"
    assert (out / "case03_ct" / "stl" / "Liver_LPS.stl").stat().st_size > 1000
    assert float(rows["case03_ct"]["liver_ml"]) == record["liver_ml"]
    assert not list(out.rglob(".*"))  # no temporary files left


def test_rerun_reuses_checked_cases_and_recomputes_an_altered_one(tmp_path, batch, model) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    small_ct(inputs / "one.nii.gz")
    small_ct(inputs / "two.nii.gz", slice(24, 34))
    out = tmp_path / "out"
    assert batch(inputs, "-o", out, "--model", model)[0] == 0
    one_json = (out / "one" / "case.json").read_bytes()
    label = out / "two" / "label.nii.gz"
    label.write_bytes(label.read_bytes()[:-10] + b"0123456789")  # same size, different content
    code, stdout, _ = batch(inputs, "-o", out, "--model", model)
    rows = rows_by_case(out / "cohort.csv")
    assert code == 0 and rows["one"]["reused"] == "yes" and rows["two"]["reused"] == "no"
    assert (out / "one" / "case.json").read_bytes() == one_json
    assert rows["two"]["status"] == "done" and "1 reused" in stdout
    assert batch(inputs, "-o", out, "--model", model, "--stl")[0] == 0  # new options: both recomputed
    assert {row["reused"] for row in rows_by_case(out / "cohort.csv").values()} == {"no"}
    assert batch(inputs, "-o", out, "--model", model, "--stl", "--tta", "flip")[0] == 0  # so is another TTA
    assert {row["reused"] for row in rows_by_case(out / "cohort.csv").values()} == {"no"}
    assert json.loads((out / "one" / "case.json").read_text())["options"]["tta"] == "flip"


def test_resume_after_a_kill_loses_only_the_case_in_flight(tmp_path, model) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(3):
        small_ct(inputs / f"c{index}.nii.gz", slice(20 + index, 32 + index))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "liver_e2net",
        "segment-batch",
        str(inputs),
        "-o",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--progress",
        "jsonl",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    )
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["stage"] == "stage2" and events[-1].get("case") == "c1":
            process.send_signal(signal.SIGKILL)  # in the middle of the second case
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert any(e["stage"] == "case" and e["case"] == "c0" and e["status"] == "done" for e in events)
    finished = {p.parent.name: p.read_bytes() for p in out.glob("*/case.json")}
    assert "c0" in finished and "c2" not in finished
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["fraction"] for line in lines] == sorted(line["fraction"] for line in lines)
    rows = rows_by_case(out / "cohort.csv")
    assert {name: row["status"] for name, row in rows.items()} == {"c0": "done", "c1": "done", "c2": "done"}
    for name, before in finished.items():  # nothing finished before the kill was recomputed
        assert rows[name]["reused"] == "yes" and (out / name / "case.json").read_bytes() == before
    assert {line["case"] for line in lines if line["stage"] == "case"} == {"c0", "c1", "c2"} - set(finished)
    assert not list(out.rglob(".*"))


def test_a_different_model_is_refused_without_force(tmp_path, batch, model, other_model) -> None:
    ct = small_ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    assert batch(ct, "-o", out, "--model", model)[0] == 0
    first = json.loads((out / "ct" / "case.json").read_text())["model"]["fingerprint"]
    code, _, stderr = batch(ct, "-o", out, "--model", other_model)
    assert code == 2 and "another model" in stderr and "--force" in stderr and first in stderr
    assert (
        json.loads((out / "ct" / "case.json").read_text())["model"]["fingerprint"] == first
    )  # nothing touched
    assert batch(ct, "-o", out, "--model", other_model, "--force")[0] == 0
    second = json.loads((out / "ct" / "case.json").read_text())["model"]["fingerprint"]
    row = rows_by_case(out / "cohort.csv")["ct"]
    assert second != first and row["model"].endswith(second) and row["reused"] == "no"


def test_duplicate_names_full_disk_and_read_only_output(tmp_path, batch, model, monkeypatch) -> None:
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        small_ct(tmp_path / folder / "ct.nii.gz")
    out = tmp_path / "out"
    real_usage = runner.shutil.disk_usage
    with monkeypatch.context() as patch:  # a nearly full disk: cases are not started
        patch.setattr(runner.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=2**20))
        code, _, stderr = batch(tmp_path / "x", tmp_path / "y", "-o", out, "--model", model)
    rows = rows_by_case(out / "cohort.csv")
    assert code == 0 and "renamed" in stderr and set(rows) == {"x_ct", "y_ct"}
    assert all(row["status"] == "failed" and "MiB free" in row["message"] for row in rows.values())

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:  # the disk fills up during the write
        patch.setattr(outputs, "_image_writer", lambda image: no_space)
        batch(tmp_path / "x", tmp_path / "y", "-o", out, "--model", model)
    assert all("no space left" in row["message"].lower() for row in rows_by_case(out / "cohort.csv").values())
    assert batch(tmp_path / "x", tmp_path / "y", "-o", out, "--model", model)[0] == 0  # space again: all done
    assert {row["status"] for row in rows_by_case(out / "cohort.csv").values()} == {"done"}

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", read_only)
        code, _, stderr = batch(tmp_path / "x", "-o", tmp_path / "elsewhere", "--model", model)
    assert code == 2 and "Read-only file system" in stderr
    (tmp_path / "file").write_text("")
    code, _, stderr = batch(tmp_path / "x", "-o", tmp_path / "file", "--model", model)
    assert code == 2 and "is a file" in stderr
    code, _, stderr = batch(tmp_path / "nowhere", "-o", out, "--model", model)
    assert code == 2 and "input not found" in stderr


def test_csv_case_list_names_cases_and_records_missing_paths(tmp_path, batch, model) -> None:
    small_ct(tmp_path / "scan.nii.gz")
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="") as stream:
        csv.writer(stream).writerows(
            [["case", "path"], ["patient 1", "scan.nii.gz"], ["patient2", "gone.nii.gz"]]
        )
    out = tmp_path / "out"
    assert batch(table, "-o", out, "--model", model, "--probabilities")[0] == 0
    rows = rows_by_case(out / "cohort.csv")
    assert rows["patient_1"]["status"] == "done" and rows["patient2"]["status"] == "failed"
    assert "input not found" in rows["patient2"]["message"]
    assert (
        sitk.ReadImage(str(out / "patient_1" / "probabilities.nii.gz")).GetNumberOfComponentsPerPixel() == 2
    )
    assert os.path.basename(rows["patient_1"]["source"]) == "scan.nii.gz"


def test_a_table_that_cannot_be_written_loses_no_case(tmp_path, batch, model, monkeypatch) -> None:
    from liver_e2net.commands import segment_batch

    ct = small_ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(segment_batch, "write_table", no_space)
        code, stdout, stderr = batch(ct, "-o", out, "--model", model)
    assert code == 2 and "could not be written" in stderr and "1 done" in stdout
    code, stdout, _ = batch(ct, "-o", out, "--model", model)
    assert code == 0 and rows_by_case(out / "cohort.csv")["ct"]["reused"] == "yes"
