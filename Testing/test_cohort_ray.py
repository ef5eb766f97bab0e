"""`segment-batch --engine ray` (optional extra): a local Ray cluster gives the single-process cohort table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import SimpleITK as sitk
from core_helpers import REPO, SAMPLE_CT, biased_checkpoint
from liver_e2net.checkpoint import save_checkpoint
from liver_e2net.cohort.ray_engine import worker_layout
from liver_e2net.cohort.table import read_table


def test_worker_layout_one_actor_per_gpu_else_cpu_shares() -> None:
    assert worker_layout({"CPU": 16, "GPU": 2}, None, None) == (2, 1.0, 8)
    assert worker_layout({"CPU": 16}, None, None) == (4, 0.0, 4)
    assert worker_layout({"CPU": 2}, None, 1) == (2, 0.0, 1)
    assert worker_layout({"CPU": 8, "GPU": 1}, 2, None) == (2, 0.5, 4)


def test_ray_engine_gives_the_local_cohort_table(tmp_path) -> None:
    pytest.importorskip("ray")
    inputs = tmp_path / "in"
    inputs.mkdir()
    ct = sitk.ReadImage(str(SAMPLE_CT))
    for index in range(2):
        sitk.WriteImage(
            ct[:, :, 20 + index : 28 + index], str(inputs / f"c{index}.nii.gz"), useCompression=True
        )
    (inputs / "broken.nii.gz").write_bytes((inputs / "c0.nii.gz").read_bytes()[:3000])
    model = save_checkpoint(biased_checkpoint(liver_bias=0.5, tumor_bias=0.3), tmp_path / "m.pt")
    common = [
        sys.executable,
        "-m",
        "liver_e2net",
        "segment-batch",
        str(inputs),
        "--model",
        str(model),
        "--threads",
        "1",
        "--progress",
        "none",
    ]
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    local = subprocess.run(
        [*common, "-o", str(tmp_path / "local"), "--device", "cpu"], capture_output=True, text=True, cwd=REPO
    )
    assert local.returncode == 0, local.stderr
    ray = subprocess.run(
        [*common, "-o", str(tmp_path / "ray"), "--engine", "ray", "--address", "local"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
    )
    assert ray.returncode == 0, ray.stderr[-3000:]
    tables = [
        [
            {k: v for k, v in row.items() if k != "seconds"}
            for row in read_table(tmp_path / name / "cohort.csv")
        ]
        for name in ("local", "ray")
    ]
    assert tables[0] == tables[1] and [row["status"] for row in tables[1]] == ["failed", "done", "done"]
    record = json.loads((tmp_path / "ray" / "c1" / "case.json").read_text())
    assert record["process"]["engine"] == "ray"
