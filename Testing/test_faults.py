"""Issue 16, the output side: never a wrong file with exit 0. Real faults on real writes: a full file system
(tmpfs where root may mount one, else a file size limit), SIGTERM/SIGINT at the write step, outputs on top of
the input or of each other, absurd numbers, two runs to one output, a cut-short file given to `evaluate`."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from core_helpers import REPO, SAMPLE_CT
from liver_e2net.cli import main
from liver_e2net.errors import UserInputError
from liver_e2net.outputs import OutputSet


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """12 slices of the 3 mm TotalSegmentator CT (122x101): a real CT segmented in about a second."""
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 20:32], str(path), useCompression=True)
    return path


@pytest.fixture(scope="module")
def wide_ct(tmp_path_factory) -> Path:
    """512 x 512 x 6 synthetic CT (air, a body, a liver-like block): its probability map takes a second to write,
    long enough to be interrupted there."""
    array = np.full((6, 512, 512), -1000, np.int16)
    array[:, 64:448, 64:448] = 40
    array[:, 150:350, 200:400] = 60
    array += np.random.default_rng(0).integers(-20, 20, array.shape, dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    path = tmp_path_factory.mktemp("wide") / "wide.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def segment(capsys, *args) -> tuple[int, str]:
    code = main(["segment", *map(str, args), "--device", "cpu", "--threads", "1", "--progress", "none"])
    return code, capsys.readouterr().err


def command(*args) -> list[str]:
    return [sys.executable, "-m", "liver_e2net", *map(str, args), "--device", "cpu", "--threads", "1"]


def left_over(folder: Path, keep: tuple[Path, ...] = ()) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p not in keep)


def with_file_size_limit(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 kB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


# 1. Full disk: refused before the work where the size is known, and nothing half-written otherwise.


def test_full_disk_is_refused_before_the_work(tiny_disk, capsys, model, ct) -> None:
    code, err = segment(capsys, ct, "-o", tiny_disk / "out.nii", "--model", model)
    assert code == 2 and f"no space left on {tiny_disk}" in err and "needed" in err
    assert left_over(tiny_disk) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"])
def test_a_write_that_fails_leaves_no_file_and_exits_2(tmp_path, model, ct, suffix) -> None:
    """A file size limit makes the writes fail as a full disk does (EFBIG instead of ENOSPC)."""
    out = tmp_path / f"out{suffix}"
    done = subprocess.run(
        command("segment", ct, "-o", out, "--model", model),
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=with_file_size_limit(100),  # the label of the biased model compresses to 279 bytes
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot write {out}" in done.stderr and "Traceback" not in done.stderr
    assert left_over(tmp_path) == []


def test_a_later_output_that_fails_takes_the_whole_set_with_it(tmp_path, model, ct) -> None:
    """The label fits under the limit, the probabilities do not: no label is left without them."""
    done = subprocess.run(
        command(
            "segment",
            ct,
            "-o",
            tmp_path / "out.nii.gz",
            "--model",
            model,
            "--probabilities",
            "--stl",
            "--report",
            tmp_path / "r.json",
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=with_file_size_limit(60_000),
    )
    assert done.returncode == 2 and "out_probabilities.nii.gz" in done.stderr, done.stderr
    assert left_over(tmp_path) == []


# 8. SIGTERM / SIGINT at the write step: no output, no temporary, a non-zero exit.


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_the_write_step_leaves_nothing(tmp_path, model, wide_ct, number) -> None:
    args = ["segment", wide_ct, "-o", tmp_path / "out.seg.nrrd", "--model", model, "--progress", "jsonl"]
    args += ["--probabilities", "--stl", "--report", tmp_path / "r.json"]
    child = subprocess.Popen(
        command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    for line in child.stdout:
        if json.loads(line)["stage"] == "write":
            child.send_signal(number)
            break
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert left_over(tmp_path) == []


# 4. Outputs never overwrite the input or each other.


@pytest.mark.parametrize(
    "outputs",
    [
        ["-o", "{ct}"],
        ["-o", "a.nii.gz", "--report", "a.nii.gz"],
        ["-o", "x.nrrd", "--probabilities", "x.nrrd"],
        ["-o", "x.nrrd", "--stl", "x.nrrd"],
    ],
)
def test_outputs_that_collide_are_refused_before_the_work(tmp_path, capsys, model, ct, outputs) -> None:
    before = ct.read_bytes()
    outputs = [str(tmp_path / o.format(ct=ct)) if not o.startswith("-") else o for o in outputs]
    code, err = segment(capsys, ct, *outputs, "--model", model)
    assert code == 2 and "give each output its own path" in err
    assert ct.read_bytes() == before and left_over(tmp_path) == []


# 7. Probability and report paths are checked before the run.


def test_unwritable_probability_and_report_paths_are_refused_first(tmp_path, capsys, model, ct) -> None:
    code, err = segment(capsys, ct, "-o", tmp_path / "o.nii.gz", "--probabilities", tmp_path / "p.png")
    assert code == 2 and "--probabilities" in err and "p.png" in err
    (tmp_path / "folder").mkdir()
    code, err = segment(capsys, ct, "-o", tmp_path / "o.nii.gz", "--report", tmp_path / "folder")
    assert code == 2 and "is a folder" in err
    assert left_over(tmp_path) == ["folder"]


# 5, 6. Numbers that would crash, hang or exhaust memory are refused before any work, in both commands.

BAD_NUMBERS = [
    (["--threads", "-1"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--tta", "multiscale", "--tta-scales", "nan"], "--tta-scales"),
    (["--tta", "multiscale", "--tta-scales", "1", "50"], "--tta-scales"),
    (["--min-lesion-ml", "nan"], "--min-lesion-ml"),
    (["--min-lesion-ml", "-1"], "--min-lesion-ml"),
    (["--stl", "--smoothing", "nan"], "--smoothing"),
    (["--stl", "--smoothing", "inf"], "--smoothing"),
    (["--stl", "--smoothing", "1e9"], "--smoothing"),
]


@pytest.mark.parametrize("numbers,option", BAD_NUMBERS)
@pytest.mark.parametrize("name", ["segment", "segment-batch"])
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, model, ct, numbers, option, name) -> None:
    out = tmp_path / ("out.nii.gz" if name == "segment" else "batch")
    code = main([name, str(ct), "-o", str(out), "--model", str(model), "--progress", "none", *numbers])
    err = capsys.readouterr().err
    assert code == 2 and option in err and "Traceback" not in err
    assert left_over(tmp_path) == []


def test_batch_output_inside_its_input_folder_is_refused(tmp_path, capsys, model, ct) -> None:
    (tmp_path / "cts").mkdir()
    (tmp_path / "cts" / "a.nii.gz").write_bytes(ct.read_bytes())
    for out in (tmp_path / "cts", tmp_path / "cts" / "out"):
        code = main(["segment-batch", str(tmp_path / "cts"), "-o", str(out), "--model", str(model)])
        assert code == 2 and "inside the input folder" in capsys.readouterr().err
    assert left_over(tmp_path) == ["cts", "cts/a.nii.gz"]


def test_batch_takes_case_outputs_without_a_path(tmp_path, capsys, model, ct) -> None:
    code = main(["segment-batch", str(ct), "-o", str(tmp_path / "b"), "--probabilities", "p.nii.gz"])
    assert code == 2 and "into each case folder" in capsys.readouterr().err


# 3. Two runs to one output: the second fails at once and says why.


def test_a_second_run_to_an_output_being_written_fails(tmp_path, capsys, model, ct) -> None:
    out = tmp_path / "out.nii.gz"
    with OutputSet([out]):  # another run holds the output (a real OS lock on the real lock file)
        code, err = segment(capsys, ct, "-o", out, "--model", model)
    assert code == 2 and "being written by another run" in err and not out.exists()
    (tmp_path / ".out.nii.gz.lock").write_text("")  # left by a killed run: no lock is held on it any more
    code, err = segment(capsys, ct, "-o", out, "--model", model, "--report", tmp_path / "r.json")
    assert code == 0, err
    assert left_over(tmp_path) == ["out.nii.gz", "r.json"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input"] == str(ct.absolute()) and report["tta"]["mode"] == "none"
    assert report["outputs"]["nifti"]["bytes"] == out.stat().st_size


def test_concurrent_runs_do_not_all_claim_success(tmp_path, model, ct) -> None:
    out = tmp_path / "out.nii.gz"
    runs = [
        subprocess.Popen(
            command("segment", ct, "-o", out, "--model", model, "--progress", "none"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for code, err in results:  # each either wrote the whole file or said that another run was writing it
        assert code == 0 or (code == 2 and "being written by another run" in err), err
    assert any(code == 0 for code, _ in results) and sitk.ReadImage(str(out)).GetSize() == (122, 101, 12)
    assert left_over(tmp_path) == ["out.nii.gz"]


# 9. evaluate refuses a cut-short label file and never leaves a partial table.


def _label_pair(folder: Path) -> tuple[Path, Path]:
    label = np.zeros((20, 64, 64), np.uint8)
    label[4:16, 10:50, 10:50] = 1
    label[8:12, 20:30, 20:30] = 2
    for name in ("pred", "ref"):
        (folder / name).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / name / "case01.nii.gz"), True)
    return folder / "pred", folder / "ref"


def test_evaluate_refuses_a_cut_short_prediction(tmp_path, capsys) -> None:
    pred, ref = _label_pair(tmp_path)
    data = (pred / "case01.nii.gz").read_bytes()
    (pred / "case01.nii.gz").write_bytes(data[: len(data) * 2 // 3])
    code = main(["evaluate", "--pred", str(pred), "--ref", str(ref)])
    assert code == 2 and "cut short" in capsys.readouterr().err
    assert left_over(pred) == ["case01.nii.gz"]


def test_evaluate_on_a_full_disk_leaves_no_table(tmp_path) -> None:
    pred, ref = _label_pair(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "liver_e2net", "evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "e"],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=with_file_size_limit(300),
    )
    assert done.returncode == 2 and "cannot write" in done.stderr and "Traceback" not in done.stderr
    assert left_over(tmp_path / "e") == []


# 11. Threads: a busy core is left alone by default.


def test_default_threads_leave_busy_cores_alone(monkeypatch) -> None:
    from liver_e2net import devices

    monkeypatch.setattr(devices, "available_cores", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert devices.default_threads() == 5
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert devices.default_threads() == 8  # a quiet machine: every core
    monkeypatch.setattr(os, "getloadavg", lambda: (20.0, 0.0, 0.0))
    assert devices.default_threads() == 1


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [
    (False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16), (True, True, torch.bfloat16),
])  # fmt: skip
def test_precision_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, amx, avx512_bf16, expected) -> None:
    """Emulated bf16 is 7-120x slower than fp32; AMX or AVX512-BF16 make it 1.4-2.2x faster."""
    from liver_e2net import devices

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cpu = torch.device("cpu")
    assert devices.autocast_dtype(cpu) is expected
    assert devices.autocast_dtype(cpu, "fp32") is None
    assert devices.dtype_name(devices.autocast_dtype(cpu)) == ("bfloat16" if expected else "float32")
    with pytest.raises(UserInputError, match="precision 'fp16': use one of auto, fp32"):
        devices.autocast_dtype(cpu, "fp16")


# 13. Memory: writing the probabilities holds at most two copies of the map.


def test_probability_writing_holds_at_most_two_copies(tmp_path) -> None:
    script = f"""
import resource, numpy as np, SimpleITK as sitk
from pathlib import Path
from liver_e2net.outputs import OutputSet, OutputTargets, write_case_outputs
from liver_e2net.pipeline import SegmentationResult
shape = (100, 256, 256)
probabilities = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
result = SegmentationResult(np.zeros(shape, np.uint8), probabilities)
del probabilities
ct = sitk.Image(256, 256, 100, sitk.sitkInt16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
target = Path({str(tmp_path / "p.nii.gz")!r})
targets = OutputTargets({{}}, probabilities=target)
with OutputSet([target]) as outputs:
    write_case_outputs(outputs, targets, result, ct)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / (2 * 4 * 100 * 256 * 256))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.3  # growth beyond the map itself, in map sizes (it was about 3)
    assert sitk.ReadImage(str(tmp_path / "p.nii.gz")).GetNumberOfComponentsPerPixel() == 2
