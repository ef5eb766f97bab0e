"""Scale-out: `torchrun --nproc_per_node 2` on CPU gives the same cohort table as one process, and both ranks work."""

from __future__ import annotations

import json
import subprocess
import sys

import SimpleITK as sitk
from core_helpers import REPO, SAMPLE_CT, biased_checkpoint
from liver_e2net.checkpoint import save_checkpoint
from liver_e2net.cohort.table import read_table

TIMING_COLUMNS = {"seconds"}


def test_two_torchrun_processes_give_the_one_process_cohort_table(tmp_path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    ct = sitk.ReadImage(str(SAMPLE_CT))
    for index in range(4):
        sitk.WriteImage(
            ct[:, :, 20 + index : 28 + index], str(inputs / f"c{index}.nii.gz"), useCompression=True
        )
    (inputs / "broken.nii.gz").write_bytes((inputs / "c0.nii.gz").read_bytes()[:3000])
    model = save_checkpoint(biased_checkpoint(liver_bias=0.5, tumor_bias=0.3), tmp_path / "m.pt")
    common = ["segment-batch", str(inputs), "--model", str(model), "--device", "cpu", "--progress", "none"]
    one = subprocess.run(
        [sys.executable, "-m", "liver_e2net", *common, "-o", str(tmp_path / "one"), "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m", "liver_e2net",
            *common,
            "-o",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    tables = [read_table(tmp_path / name / "cohort.csv") for name in ("one", "two")]
    strip = [[{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in table] for table in tables]
    assert strip[0] == strip[1] and len(strip[0]) == 5
    assert {row["status"] for row in strip[1]} == {"done", "failed"}
    ranks = {json.loads(p.read_text())["process"].get("rank") for p in (tmp_path / "two").glob("*/case.json")}
    assert ranks == {0, 1}
    for name in ("c0", "c3"):  # the label maps agree voxel for voxel
        labels = [
            sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / name / "label.nii.gz")))
            for run in ("one", "two")
        ]
        assert (labels[0] == labels[1]).all()
