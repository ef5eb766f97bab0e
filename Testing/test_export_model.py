"""export-model: stages from two runs become one fp16 model that the pipeline loads."""

from __future__ import annotations

import dataclasses

import torch
from liver_e2net.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from liver_e2net.cli import main
from liver_e2net.config import lite_config


def test_export_combines_stages_in_half_precision(tmp_path, capsys) -> None:
    first = save_checkpoint(random_checkpoint(lite_config(), seed=1, name="run-a"), tmp_path / "a.pt")
    second = save_checkpoint(
        random_checkpoint(lite_config(), seed=2, validation_dice={"liver": 0.9}), tmp_path / "b.pt"
    )
    assert (
        main(
            [
                "export-model",
                "--stage1",
                str(first),
                "--stage2",
                str(second),
                "-o",
                str(tmp_path / "m.pt"),
                "--name",
                "shipped",
            ]
        )
        == 0
    )
    model = load_checkpoint(tmp_path / "m.pt")
    a, b = load_checkpoint(first), load_checkpoint(second)
    key = "head.conv.weight"
    assert torch.allclose(model.stage1[key].float(), a.stage1[key], atol=1e-3)
    assert torch.allclose(
        model.stage2["fusion_head.conv.weight"].float(), b.stage2["fusion_head.conv.weight"], atol=1e-3
    )
    assert model.stage1[key].dtype == torch.float16
    assert model.metadata["name"] == "shipped" and model.metadata["validation_dice"] == {"liver": 0.9}
    assert (tmp_path / "m.pt").stat().st_size < 0.6 * first.stat().st_size


def test_re_exporting_one_file_keeps_its_record_instead_of_nesting_it_again(tmp_path, capsys) -> None:
    first = save_checkpoint(random_checkpoint(lite_config(), seed=1, name="run-a"), tmp_path / "a.pt")
    second = save_checkpoint(random_checkpoint(lite_config(), seed=2, name="run-b"), tmp_path / "b.pt")
    combined = tmp_path / "m.pt"
    assert main(["export-model", "--stage1", str(first), "--stage2", str(second), "-o", str(combined)]) == 0
    record = load_checkpoint(combined).metadata
    assert record["stage1_training"]["name"] == "run-a" and record["stage2_training"]["name"] == "run-b"
    again = tmp_path / "m2.pt"
    assert main(["export-model", "--stage1", str(combined), "-o", str(again), "--name", "renamed"]) == 0
    renamed = load_checkpoint(again).metadata
    assert renamed["name"] == "renamed"
    assert renamed["stage1_training"] == record["stage1_training"]  # the same history, not one level deeper
    assert renamed["stage2_training"] == record["stage2_training"]


def test_exporting_an_export_nests_only_each_stages_own_history(tmp_path, capsys) -> None:
    stage1_run = save_checkpoint(random_checkpoint(lite_config(), seed=1, name="run-a"), tmp_path / "a.pt")
    model = tmp_path / "m0.pt"
    assert main(["export-model", "--stage1", str(stage1_run), "--stage2", str(stage1_run), "-o", str(model)]) == 0
    sizes = []
    for round_ in range(1, 6):  # a fine-tuning chain: each round's new stage 2 over the previous model's stage 1
        run = save_checkpoint(random_checkpoint(lite_config(), seed=round_, name=f"s2-{round_}"), tmp_path / "r.pt")
        exported = tmp_path / f"m{round_}.pt"
        assert main(["export-model", "--stage1", str(model), "--stage2", str(run), "-o", str(exported)]) == 0
        record = load_checkpoint(exported).metadata
        assert record["stage1_training"]["name"] == "run-a"  # stage 1's history, however many exports ago
        assert record["stage2_training"]["name"] == f"s2-{round_}"
        assert "stage1_training" not in record["stage1_training"]
        sizes.append(len(repr(record)))
        model = exported
    assert max(sizes) < 1.2 * min(sizes)  # it stays the same size; whole records nested doubled it each round


def test_export_refuses_stages_of_different_configs(tmp_path, capsys) -> None:
    other = dataclasses.replace(
        lite_config(), stage2=dataclasses.replace(lite_config().stage2, decoder_channels=8)
    )
    first = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "a.pt")
    second = save_checkpoint(random_checkpoint(other), tmp_path / "b.pt")
    assert (
        main(["export-model", "--stage1", str(first), "--stage2", str(second), "-o", str(tmp_path / "m.pt")])
        == 2
    )
    assert "different model configs" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_held_out_figures_replace_validation_dice_in_the_description(tmp_path, capsys) -> None:
    """What `info` and the panel show is the real held-out CT's accuracy, never synthetic validation Dice."""
    import json

    run = save_checkpoint(
        random_checkpoint(lite_config(), validation_dice={"liver": 0.95, "tumor": 0.77}), tmp_path / "run.pt"
    )
    scores = {"case": "case01", "liver_dice": 0.9512, "tumor_dice": 0.6123, "ref_lesions": 2, "chlebus_tp": 2,
              "chlebus_fp_per_case": 1.0, "liver_assd_mm": 1.2}
    (tmp_path / "evaluation.json").write_text(json.dumps({"cases": [{"scores": scores}]}))
    assert load_checkpoint(run).describe().count("no held-out real-CT accuracy") == 1
    out = tmp_path / "m.pt"
    args = ["export-model", "--stage1", str(run), "-o", str(out), "--held-out", str(tmp_path / "evaluation.json")]
    assert main(args) == 0
    description = load_checkpoint(out).describe()
    assert "held-out case01: liver Dice 0.951, tumor Dice 0.612, 2/2 lesions, 1 false" in description
    assert "val Dice" not in description and "0.77" not in description
    other = save_checkpoint(random_checkpoint(lite_config(), seed=1), tmp_path / "other.pt")
    paired = tmp_path / "paired.pt"
    assert main(["export-model", "--stage1", str(out), "--stage2", str(other), "-o", str(paired)]) == 0
    assert "no held-out real-CT accuracy" in load_checkpoint(paired).describe()  # not the first model's figures
    (tmp_path / "bad.json").write_text("{}")
    refused = ["export-model", "--stage1", str(run), "-o", str(tmp_path / "n.pt"), "--held-out", str(tmp_path / "bad.json")]
    assert main(refused) == 2
    assert "bad.json: not an evaluation.json" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()


def test_export_sets_the_z_margin_in_mm_and_drops_figures_measured_without_it(tmp_path, capsys) -> None:
    import json

    scores = {"case": "case01", "liver_dice": 0.95, "tumor_dice": 0.6, "ref_lesions": 2, "chlebus_tp": 2, "chlebus_fp_per_case": 0.0}
    (tmp_path / "evaluation.json").write_text(json.dumps({"cases": [{"scores": scores}]}))
    run = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "run.pt")
    measured = tmp_path / "measured.pt"
    assert main(["export-model", "--stage1", str(run), "-o", str(measured), "--held-out", str(tmp_path / "evaluation.json")]) == 0
    assert load_checkpoint(measured).config.preprocessing.box_margin_z_mm == 0.0  # as trained
    wider = tmp_path / "wider.pt"
    assert main(["export-model", "--stage1", str(measured), "-o", str(wider), "--box-margin-z-mm", "20"]) == 0
    exported = load_checkpoint(wider)
    assert exported.config.preprocessing.box_margin_z_mm == 20.0
    assert "no held-out real-CT accuracy" in exported.describe()  # measured with the old box
    assert main(["export-model", "--stage1", str(run), "-o", str(tmp_path / "n.pt"), "--box-margin-z-mm", "-5"]) == 2
    assert "--box-margin-z-mm -5.0: use a distance >= 0" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()
    assert load_checkpoint(measured).config.preprocessing.box_margin_mm == 15.0  # in-plane: as trained
    assert main(["export-model", "--stage1", str(measured), "-o", str(wider), "--box-margin-mm", "35"]) == 0
    exported = load_checkpoint(wider).config.preprocessing
    assert (exported.box_margin_mm, exported.box_margin_z_mm) == (35.0, 0.0)
    assert "no held-out real-CT accuracy" in load_checkpoint(wider).describe()
    assert main(["export-model", "--stage1", str(run), "-o", str(tmp_path / "n.pt"), "--box-margin-mm", "-1"]) == 2
    assert "--box-margin-mm -1.0: use a distance >= 0" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()


def test_export_sets_the_models_tta_scales_and_refuses_bad_ones(tmp_path, capsys) -> None:
    run = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "run.pt")
    assert load_checkpoint(run).config.preprocessing.tta_scales == (0.875, 1.0)  # the default fusion
    single = tmp_path / "single.pt"
    assert main(["export-model", "--stage1", str(run), "-o", str(single), "--tta-scales", "1"]) == 0
    assert load_checkpoint(single).config.preprocessing.tta_scales == (1.0,)
    assert "Best = Fast" in capsys.readouterr().out
    # A stage 2 exported with other inference settings still combines with its stage 1, taking stage 2's.
    wider = tmp_path / "wider.pt"
    assert main(["export-model", "--stage1", str(single), "-o", str(wider), "--box-margin-z-mm", "20",
                 "--box-margin-mm", "35"]) == 0  # fmt: skip
    assert main(["export-model", "--stage1", str(run), "--stage2", str(wider), "-o", str(tmp_path / "c.pt")]) == 0
    combined = load_checkpoint(tmp_path / "c.pt").config.preprocessing
    assert (combined.tta_scales, combined.box_margin_z_mm, combined.box_margin_mm) == ((1.0,), 20.0, 35.0)
    assert main(["export-model", "--stage1", str(run), "-o", str(tmp_path / "bad.pt"), "--tta-scales", "0"]) == 2
    assert "--tta-scales 0.0: each scale must be within" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()


def test_several_stage2_files_export_the_mean_of_their_weights_without_a_filter(tmp_path, capsys) -> None:
    """A model soup: each weight and BatchNorm statistic is the mean of the fine-tunes'; no old filter rides on it."""
    statistic = "seg_branch.encoder.stem.1.running_var"
    runs = []
    for seed in (1, 2, 3):
        run = random_checkpoint(lite_config(), seed=seed, name=f"ft-{seed}")
        run.stage2[statistic] = torch.rand_like(run.stage2[statistic]) + seed  # as if trained: BN stats differ
        runs.append(save_checkpoint(run, tmp_path / f"{seed}.pt"))
    soup = tmp_path / "soup.pt"
    assert main(["export-model", "--stage1", str(runs[0]), "--stage2", *map(str, runs), "-o", str(soup)]) == 0
    model, parts = load_checkpoint(soup), [load_checkpoint(run) for run in runs]
    for key in ("fusion_head.conv.weight", statistic):
        expected = torch.stack([part.stage2[key].float() for part in parts]).mean(0)
        assert torch.allclose(model.stage2[key].float(), expected, atol=2e-3)
        assert not torch.allclose(model.stage2[key].float(), parts[0].stage2[key].float(), atol=2e-3)
    assert model.fp_filter is None
    assert [record["name"] for record in model.metadata["stage2_soup"]] == ["ft-1", "ft-2", "ft-3"]
    model.build()  # the averaged weights load into the stored config


def test_a_soup_refuses_a_file_of_another_config_by_name(tmp_path, capsys) -> None:
    wider = dataclasses.replace(lite_config(), stage2=dataclasses.replace(lite_config().stage2, decoder_channels=8))
    first = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "a.pt")
    second = save_checkpoint(random_checkpoint(wider), tmp_path / "b.pt")
    code = main(["export-model", "--stage1", str(first), "--stage2", str(first), str(second), "-o", str(tmp_path / "m.pt")])
    assert code == 2
    assert "b.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
