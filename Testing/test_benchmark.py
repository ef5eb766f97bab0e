"""`benchmark`: times a real model in child processes and prints the median of its runs, end to end included."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk
from liver_e2net.cli import main

SAMPLE_CT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "crlm1004_ct.nii.gz"


def test_benchmark_times_the_given_model_with_a_median_and_end_to_end(tmp_path, model, capsys) -> None:
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 18:24], str(ct))
    assert main(["benchmark", str(ct), "--model", str(model), "--repeats", "2", "--threads", "1",
                 "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "median of 2 runs" in out and "e2e s" in out
    (row,) = json.loads((tmp_path / "b.json").read_text())
    assert row["model"] == str(model) and row["slices"] == 6 and row["threads"] == 1
    assert 0 < row["seconds"]["stage1"] <= row["seconds"]["total"]
    assert row["end_to_end_s"] > row["seconds"]["total"]  # start-up, reading and writing come on top
    assert main(["benchmark", str(ct), "--model", str(model), "--repeats", "0"]) == 2
    (tmp_path / "taken").write_text("a file where the JSON's folder should be")
    assert main(["benchmark", str(ct), "--model", str(model), "--json", str(tmp_path / "taken" / "b.json")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err  # refused before any timing


def test_benchmark_defaults_to_the_bundled_model(tmp_path, model, monkeypatch) -> None:
    from liver_e2net.commands import benchmark

    monkeypatch.setenv("LIVER_E2NET_MODEL", str(model))
    args = type("Args", (), {"model": None, "configs": None})()
    assert benchmark._targets(args) == [str(model)]
    monkeypatch.delenv("LIVER_E2NET_MODEL")
    assert Path(benchmark._targets(args)[0]).name == "liver_e2net_lite.pt"  # the default first, then the others
    args.configs = "lite, paper"
    assert benchmark._targets(args) == ["lite", "paper"]
