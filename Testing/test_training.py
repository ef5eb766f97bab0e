"""Training: losses, edge targets, data sources and their refusals, samples, a real run, stop and exact resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from core_helpers import shared_case
from liver_e2net import cli
from liver_e2net.checkpoint import load_checkpoint
from liver_e2net.config import lite_config, paper_config
from liver_e2net.errors import UserInputError
from liver_e2net.models import E2NetOutput
from liver_e2net.training import CasePaths, TrainConfig, Trainer, TrainingCase, discover, read_state
from liver_e2net.training.cache import prepare_cases
from liver_e2net.training.cases import read_case
from liver_e2net.training.labels import read_label, segment_role
from liver_e2net.training.losses import liver_distillation_loss, stage1_loss, stage2_loss
from liver_e2net.training.samples import EpochSampler, Stage1Samples, Stage2Samples
from liver_e2net.training.sources import split_cases
from liver_e2net.training.targets import edge_distance_map

# A lite model on small images: the same code paths at a fraction of the cost.
TINY = dataclasses.replace(
    lite_config(),
    preprocessing=dataclasses.replace(lite_config().preprocessing, stage1_pixel_mm=2.0, stage2_size=64),
)
QUICK = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, val_cases=("b",), bn_calibration_samples=2)


def phantom(name: str, seed: int = 0, shape=(6, 64, 64), spacing=(2.0, 2.0, 3.0)) -> TrainingCase:
    """Body ellipse (40 HU) holding an ellipsoidal 'liver' (110 HU) with a hypodense 'tumor' in the middle slices."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    cy, cx = shape[1] / 2, shape[2] / 2
    body = ((y - cy) / 28) ** 2 + ((x - cx) / 30) ** 2 <= 1
    liver = ((y - cy + 4) / 12) ** 2 + ((x - cx + 10) / 14) ** 2 <= 1
    tumor = liver & ((y - cy + 4) ** 2 + (x - cx + 10) ** 2 <= 9) & (np.abs(z - shape[0] / 2) < 2)
    ct = np.where(body, 40.0, -1000.0) + np.where(liver, 70.0, 0.0) - np.where(tumor, 60.0, 0.0)
    ct = (ct + rng.normal(0, 8, shape)).astype(np.int16)
    label = np.where(tumor, 2, np.where(liver, 1, 0)).astype(np.uint8)
    return TrainingCase(name, ct, label, spacing)


def write_image(array: np.ndarray, path, spacing=(2.0, 2.0, 3.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


# -- losses and targets -----------------------------------------------------------------------------------


def test_losses_match_hand_computed_values():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    total, parts = stage1_loss(logits, target)
    # IoU: I = 0.5, U = 4 * 0.5 + 1 - 0.5 = 2.5, smoothing 1: 1 - 1.5 / 3.5; BCE: ln 2 per pixel.
    assert parts["iou"].item() == pytest.approx(1 - 1.5 / 3.5)
    assert parts["bce"].item() == pytest.approx(np.log(2))
    assert total.item() == pytest.approx(1 - 1.5 / 3.5 + np.log(2))
    confident = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    assert stage1_loss(confident, target)[0].item() == pytest.approx(0.0, abs=1e-6)
    # No liver and nothing predicted costs nothing (the smoothing), a full prediction costs IoU 1 - 1/5.
    assert stage1_loss(torch.full((1, 1, 2, 2), -20.0), torch.zeros(1, 1, 2, 2))[0].item() == pytest.approx(
        0, abs=1e-6
    )
    assert stage1_loss(torch.full((1, 1, 2, 2), 20.0), torch.zeros(1, 1, 2, 2))[1][
        "iou"
    ].item() == pytest.approx(0.8)
    masks = torch.cat([target, torch.zeros_like(target)], dim=1)  # (1, 2, 2, 2): liver, tumor
    edges = torch.full_like(masks, 0.5)
    output = E2NetOutput(torch.zeros_like(masks), torch.zeros_like(masks), torch.zeros_like(masks))
    total, parts = stage2_loss(output, masks, edges)
    segmentation = ((1 - 1.5 / 3.5) + (1 - 1 / 3)) / 2 + np.log(2)  # liver and (empty) tumor IoU, then BCE
    assert parts["s1"].item() == pytest.approx(segmentation) and parts["s2"].item() == pytest.approx(
        segmentation
    )
    assert parts["edge"].item() == pytest.approx(np.log(2))
    assert total.item() == pytest.approx(2 * segmentation + 4 * np.log(2))


def test_liver_distillation_pulls_only_the_liver_channel_to_the_teacher():
    """At the teacher's own liver logits the loss is flat; elsewhere it pulls the liver channel of both heads
    toward them and leaves the tumor channel alone."""
    teacher = E2NetOutput(s1=torch.randn(2, 2, 4, 4), edge=torch.randn(2, 2, 4, 4), s2=torch.randn(2, 2, 4, 4))
    edge = torch.zeros(2, 2, 4, 4)
    at_teacher = teacher.s2.clone().requires_grad_()
    liver_distillation_loss(E2NetOutput(s1=at_teacher, edge=edge, s2=at_teacher), teacher).backward()
    assert at_teacher.grad.abs().max().item() < 1e-6
    s1, s2 = torch.zeros(2, 2, 4, 4, requires_grad=True), torch.zeros(2, 2, 4, 4, requires_grad=True)
    loss = liver_distillation_loss(E2NetOutput(s1=s1, edge=edge, s2=s2), teacher)
    loss.backward()
    for grad in (s1.grad, s2.grad):
        assert torch.all(grad[:, 1] == 0) and torch.equal(torch.sign(grad[:, 0]), torch.sign(-teacher.s2[:, 0]))
    assert loss.item() > liver_distillation_loss(E2NetOutput(teacher.s2, edge, teacher.s2), teacher).item()
    plain = liver_distillation_loss(s2.detach(), teacher)  # an R2UNet stage 2: its one output
    assert plain.item() == pytest.approx(loss.item() / 2)


def test_edge_distance_map_of_a_square():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    target = edge_distance_map(mask)
    expected = np.zeros((9, 9), np.float32)
    expected[2:7, 2:7] = 1.0  # the square's boundary ring: distance 0 to the edge
    expected[3:6, 3:6] = 0.5  # one pixel inside: distance 1 of the largest 2
    expected[4, 4] = 0.0  # the centre, deepest
    np.testing.assert_allclose(target, expected)
    assert edge_distance_map(np.zeros((4, 4), bool)).sum() == 0
    single = np.zeros((4, 4), bool)
    single[1, 1] = True
    assert edge_distance_map(single)[1, 1] == 1.0


# -- sources and refusals ---------------------------------------------------------------------------------


def test_folder_pairing_json_list_and_unpaired_files(tmp_path):
    case = phantom("x")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for name, image_name in (("a", "a_0000.nii.gz"), ("b", "b.nrrd")):
        write_image(case.ct, tmp_path / "imagesTr" / image_name)
        write_image(case.label, tmp_path / "labelsTr" / f"{name}.nii.gz")
    (tmp_path / "imagesTr" / "notes.txt").write_text("not a volume")
    cases = discover(tmp_path)
    assert [(c.name, c.image.name, c.label.name) for c in cases] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"),
        ("b", "b.nrrd", "b.nii.gz"),
    ]
    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps([{"image": "imagesTr/a_0000.nii.gz", "label": "labelsTr/a.nii.gz"}]))
    assert discover(listing) == [
        CasePaths("a", tmp_path / "imagesTr/a_0000.nii.gz", tmp_path / "labelsTr/a.nii.gz")
    ]
    write_image(case.ct, tmp_path / "imagesTr" / "c_0000.nii.gz")
    with pytest.raises(UserInputError, match="c_0000.nii.gz"):
        discover(tmp_path)
    listing.write_text(json.dumps([{"image": "missing.nii.gz", "label": "labelsTr/a.nii.gz"}]))
    with pytest.raises(UserInputError, match="missing.nii.gz"):
        discover(listing)


@pytest.mark.parametrize(
    "problem, match",
    [("spacing", "does not lie on its CT's grid"), ("values", "label values 255"), ("empty", "has no liver")],
)
def test_bad_label_files_are_refused_by_name(tmp_path, problem, match):
    case = phantom("x")
    write_image(case.ct, tmp_path / "ct.nii.gz")
    label, spacing = case.label.copy(), (2.0, 2.0, 3.0)
    if problem == "spacing":
        spacing = (1.0, 2.0, 3.0)
    elif problem == "values":
        label[label == 1] = 255
    else:
        label[:] = 0
    write_image(label, tmp_path / "label.nii.gz", spacing)
    with pytest.raises(UserInputError, match=match) as error:
        read_case(CasePaths("x", tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz"))
    assert "label.nii.gz" in str(error.value)


def test_too_few_cases_and_unknown_validation_case():
    with pytest.raises(UserInputError, match="at least 2"):
        split_cases(["a"], (), 0.2, 0)
    with pytest.raises(UserInputError, match="no such case"):
        split_cases(["a", "b"], ("c",), 0.2, 0)
    assert split_cases(["a", "b", "c"], ("c",), 0.2, 0) == (["a", "b"], ["c"])
    training, validation = split_cases([f"c{i}" for i in range(10)], (), 0.2, 0)
    assert len(validation) == 2 and not set(training) & set(validation)


def test_unwritable_output_and_missing_run_are_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserInputError, match="cannot write to the output folder"):
        Trainer(
            [phantom("a"), phantom("b", 1)], blocker / "out", QUICK, model_config=TINY, device="cpu"
        ).run()
    with pytest.raises(UserInputError, match="no training run to resume"):
        Trainer(None, tmp_path / "empty", resume=True, device="cpu").run()


def test_weights_that_overflow_under_a_finite_loss_are_never_saved(tmp_path):
    # One step at an absurd rate: the loss of that step is finite, the BatchNorm statistics after it are not.
    diverging = dataclasses.replace(QUICK, lr=1e20, steps_per_epoch=1, precision="fp32")
    with pytest.raises(UserInputError, match=r"diverged in stage 1, epoch 1: .*running_var.* lower --lr"):
        Trainer([phantom("a"), phantom("b", 1)], tmp_path / "run", diverging, model_config=TINY, device="cpu").run()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train.log"]


def test_seg_nrrd_segments_are_mapped_by_name(tmp_path, caplog):
    case = phantom("x")
    ct = sitk.GetImageFromArray(case.ct)
    ct.SetSpacing(case.spacing)
    layers = np.stack([(case.label >= 1) * 1 + (case.ct > 300) * 3, (case.label == 2) * 1], axis=-1).astype(
        np.uint8
    )
    segmentation = sitk.GetImageFromArray(
        layers, isVector=True
    )  # two layers, as Slicer writes overlapping segments
    segmentation.CopyInformation(ct)
    for index, (name, value, layer) in enumerate((("Liver", 1, 0), ("Portal vein", 3, 0), ("Tumor_1", 1, 1))):
        for key, text in (("Name", name), ("LabelValue", value), ("Layer", layer)):
            segmentation.SetMetaData(f"Segment{index}_{key}", str(text))
    path = tmp_path / "x.seg.nrrd"
    sitk.WriteImage(segmentation, str(path))
    with caplog.at_level(logging.INFO, logger="liver_e2net"):
        label = read_label(path, ct)
    np.testing.assert_array_equal(label, case.label)
    assert "'Tumor_1' (value 1, layer 1) -> tumor" in caplog.text and "ignored 'Portal vein'" in caplog.text
    assert [segment_role(n) for n in ("Liver", "liver tumour", "Lesion 3", "Hepatic vessels", "Spleen")] == [
        "liver",
        "tumor",
        "tumor",
        None,
        None,
    ]


def test_cropped_seg_nrrd_is_pasted_into_the_ct_grid(tmp_path):
    case = phantom("x")
    ct = sitk.GetImageFromArray(case.ct)
    ct.SetSpacing(case.spacing)
    crop = sitk.GetImageFromArray(np.ascontiguousarray(case.label[1:5, 10:50, 8:40]))
    crop.SetSpacing(case.spacing)
    crop.SetOrigin(ct.TransformIndexToPhysicalPoint((8, 10, 1)))
    crop.SetMetaData("Segment0_Name", "Liver")
    crop.SetMetaData("Segment1_Name", "Liver tumor")
    crop.SetMetaData("Segment1_LabelValue", "2")
    sitk.WriteImage(crop, str(tmp_path / "crop.seg.nrrd"))
    expected = np.zeros_like(case.label)
    expected[1:5, 10:50, 8:40] = case.label[1:5, 10:50, 8:40]
    np.testing.assert_array_equal(read_label(tmp_path / "crop.seg.nrrd", ct), expected)


# -- samples ------------------------------------------------------------------------------------------------


def test_samples_have_inference_shapes_and_are_reproducible(tmp_path):
    cases = prepare_cases([phantom("a"), phantom("b", 1, spacing=(1.0, 1.0, 3.0))], tmp_path)
    stage1 = Stage1Samples(cases, TINY, QUICK)
    image, liver = stage1[3]
    assert image.shape == liver.shape == (1, *stage1.size) and all(n % 32 == 0 for n in stage1.size)
    assert set(torch.unique(liver).tolist()) <= {0.0, 1.0} and image.min() >= -1.2
    torch.testing.assert_close(stage1[3][0], image)
    stage1.epoch = 1
    assert not torch.equal(stage1[3][0], image)  # a new epoch draws new samples
    stage2 = Stage2Samples(cases, TINY, dataclasses.replace(QUICK, synthetic_tumors=0.5))
    image, masks, edges = stage2[0]
    assert image.shape == (1, 64, 64) and masks.shape == edges.shape == (2, 64, 64)
    assert edges.min() >= 0 and edges.max() <= 1 and edges[masks == 0].abs().max() == 0
    assert masks[1].le(masks[0]).all()  # tumor inside the liver
    tumor_share = np.mean([stage2[i][1][1].any().item() for i in range(40)])
    assert tumor_share > 0.5  # half the samples come from tumor slices, synthetic tumors add more
    assert list(EpochSampler(steps=3, batch_size=2, rank=1, world_size=2, start_step=1)) == [5, 7, 9, 11]


# -- runs ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The CLI on real CT (case02 trains, case04 validates): one epoch of two steps per stage, then resumed."""
    root = tmp_path_factory.mktemp("real")
    cases = [(shared_case(f"{n}_ct.nii.gz"), shared_case(f"{n}_label.nii.gz")) for n in ("case02", "case04")]
    common = ["--cache", str(root / "cache"), "--device", "cpu", "--threads", "1", "--progress", "jsonl"]
    pairs = [arg for ct, label in cases for arg in ("--case", str(ct), str(label))]
    options = (
        "--val-cases case04 --epochs 1 --steps-per-epoch 2 --batch-size 2 --bn-calibration-samples 2".split()
    )
    first = ["train", *pairs, "-o", str(root / "run"), *options, *common]
    codes = [cli.main(first), cli.main(["train", "--resume", str(root / "run"), "--epochs", "2", *common])]
    return root / "run", codes


def test_real_run_writes_loadable_checkpoints_and_resume_continues(real_run, capsys):
    run, codes = real_run
    assert codes == [0, 0]
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best.config == lite_config()
    assert last.metadata["training_cases"] == ["case02"] and last.metadata["validation_cases"] == ["case04"]
    assert last.metadata["stage_epochs"] == {"stage1": 2, "stage2": 2} and last.metadata["epochs"] == 4
    dice = best.metadata["validation_dice"]
    assert 0 <= dice["liver"] <= 1 and dice["tumor"] in (
        None,
        0.0,
    )  # case04 has no tumor: 0 once one is predicted
    assert last.metadata["command_line"].startswith("liver-e2net")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [
        ("stage1", 1),
        ("stage2", 1),
        ("stage1", 2),
        ("stage2", 2),
    ]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in records)
    assert "stage 2 epoch 2" in (run / "train.log").read_text()


def test_resume_with_another_config_is_refused(real_run, capsys):
    run, _ = real_run
    assert cli.main(["train", "--resume", str(run), "--config", "paper", "--device", "cpu"]) == 2
    assert "'lite' model config" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="only --epochs may change"):
        Trainer(
            None,
            run,
            dataclasses.replace(TrainConfig.from_dict(read_state(run)["train_config"]), lr=0.5),
            resume=True,
            device="cpu",
        ).run()
    with pytest.raises(UserInputError, match="differs from the requested"):
        Trainer(None, run, resume=True, model_config=paper_config(), device="cpu").run()


class InterruptAt:
    """A progress reporter that sends this process SIGINT at its first report of `stage` (after its first step)."""

    def __init__(self, stage: str):
        self.stage, self.sent, self.lines = stage, False, []

    def __call__(self, stage, fraction, message="", **extra):
        self.lines.append((stage, message))
        if stage == self.stage and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("ema_decay", [0.0, 0.5], ids=["last-weights", "weight-average"])
def test_sigint_stops_after_the_step_and_resume_is_exact(tmp_path, ema_decay):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    config = dataclasses.replace(QUICK, ema_decay=ema_decay)
    try:
        cases = [phantom("a"), phantom("b", 1)]
        options = dict(model_config=TINY, device="cpu", cache=tmp_path / "cache")
        whole = Trainer(cases, tmp_path / "whole", config, **options).run()
        interrupt = InterruptAt("stage2")
        before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a shell's background job
        stopped = Trainer(cases, tmp_path / "split", config, progress=interrupt, **options).run()
        assert stopped.exit_code == 130 and "SIGINT" in stopped.message and interrupt.lines[-1][0] == "error"
        assert signal.getsignal(signal.SIGINT) is before  # handlers restored
        assert read_state(tmp_path / "split")["stages"]["stage2"]["step"] == 1
        assert (tmp_path / "split" / "best.pt").exists()  # stage 1's best stays
        resumed = Trainer(cases, tmp_path / "split", resume=True, **options).run()
        assert resumed.exit_code == 0
        assert resumed.stage_epochs == whole.stage_epochs == {"stage1": 1, "stage2": 1}
    finally:
        torch.set_num_threads(threads)
    for name in ("last", "best"):  # with --ema-decay, best.pt holds the average, resumed from the state
        expected, actual = load_checkpoint(getattr(whole, name)), load_checkpoint(getattr(resumed, name))
        for stage in ("stage1", "stage2"):
            for key, value in getattr(expected, stage).items():
                torch.testing.assert_close(
                    getattr(actual, stage)[key], value, rtol=0, atol=0, msg=f"{name} {stage} {key}"
                )
    assert resumed.validation_dice == whole.validation_dice
    last, best = load_checkpoint(whole.last), load_checkpoint(whole.best)
    averaged = any(not torch.equal(best.stage2[k], v) for k, v in last.stage2.items() if v.is_floating_point())
    assert averaged == bool(ema_decay)  # the average lags the last step's weights; without it they are one
    if ema_decay:
        return

    # --init fine-tunes: config and weights come from the checkpoint; an untrained stage keeps its weights.
    options["model_config"] = None  # taken from the checkpoint
    Trainer(
        cases, tmp_path / "tuned", dataclasses.replace(QUICK, stages=(2,)), init=whole.best, **options
    ).run()
    initial, result = load_checkpoint(whole.best), load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert result.config == TINY and result.metadata["stage_epochs"] == {"stage2": 1}
    for name, value in initial.stage1.items():
        torch.testing.assert_close(result.stage1[name], value, rtol=0, atol=0)
    with pytest.raises(UserInputError, match="differs from the requested"):
        Trainer(
            cases, tmp_path / "other", QUICK, init=whole.best, model_config=lite_config(), device="cpu"
        ).run()


def test_stage2_r2unet_baseline_trains_on_the_segmentation_loss_and_is_served(tmp_path):
    """Table 3's baseline: an R2UNet in stage 2 learns from IoU + BCE on its logits alone (no edge term, the same
    tumor weighting), validates, and the pipeline serves it."""
    from liver_e2net.pipeline import Segmenter

    masks = torch.zeros(1, 2, 8, 8)
    masks[:, 0, 1:7, 1:7], masks[:, 1, 3:5, 3:5] = 1, 1
    logits, edges = torch.randn(1, 2, 8, 8), torch.rand(1, 2, 8, 8)
    e2net_total, e2net_parts = stage2_loss(
        E2NetOutput(logits, logits, logits), masks, edges, tumor_pos_weight=3
    )
    total, parts = stage2_loss(logits, masks, edges, tumor_pos_weight=3)
    assert set(parts) == {"s"} and total.item() == pytest.approx(e2net_parts["s2"].item())
    assert total.item() == pytest.approx((e2net_total - 4 * e2net_parts["edge"]).item() / 2)

    config = dataclasses.replace(TINY, stage2=dataclasses.replace(TINY.stage2, arch="r2unet"))
    options = dataclasses.replace(QUICK, stages=(2,), tumor_pos_weight=5.0)
    result = Trainer([phantom("a"), phantom("b", 1)], tmp_path / "run", options, model_config=config,
                     device="cpu", cache=tmp_path / "cache").run()  # fmt: skip
    assert result.exit_code == 0 and 0 <= result.validation_dice["liver"] <= 1
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["stage"] == "stage2" and set(record["train"]) == {"s"} and np.isfinite(record["val_loss"])
    checkpoint = load_checkpoint(result.best)
    assert checkpoint.config.stage2.arch == "r2unet" and "fusion_head.conv.weight" not in checkpoint.stage2
    checkpoint.stage1["head.conv.bias"] = torch.tensor([4.0])  # find 'liver' everywhere so that stage 2 runs
    case = phantom("c", 2)
    image = sitk.GetImageFromArray(case.ct)
    image.SetSpacing(case.spacing)
    segmented = Segmenter(checkpoint, device="cpu", threads=1).segment(image, probabilities=True)
    assert segmented.label.shape == case.ct.shape and segmented.seconds["stage2"] > 0


def test_a_bad_case_is_left_out_by_name_and_the_run_goes_on(tmp_path, caplog):
    """No liver, labels outside 0/1/2, a label on another grid: each named with its reason; the rest train."""
    good = [phantom("a"), phantom("b", 1)]
    no_liver = dataclasses.replace(phantom("c", 2), label=np.zeros((6, 64, 64), np.uint8))
    wrong_values = phantom("d", 3)
    wrong_values.label[wrong_values.label == 1] = 7
    options = dict(model_config=TINY, device="cpu", cache=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="liver_e2net.training"):
        result = Trainer([*good, no_liver, wrong_values], tmp_path / "run", QUICK, **options).run()
    assert result.exit_code == 0, result.message
    warnings = caplog.text
    assert "left out case c" in warnings and "has no liver" in warnings
    assert "left out case d" in warnings and "label values 7" in warnings
    assert load_checkpoint(tmp_path / "run" / "last.pt").metadata["training_cases"] == ["a"]
    with pytest.raises(UserInputError, match="too few usable cases .1 of 2.: c: .*has no liver"):
        Trainer([good[0], no_liver], tmp_path / "run2", QUICK, **options).run()


def test_a_state_from_another_torch_version_is_refused_with_the_way_on(real_run, tmp_path):
    run, _ = real_run
    state = read_state(run)
    copy = tmp_path / "old"
    copy.mkdir()
    torch.save({**state, "torch_version": "1.13.1+cu117"}, copy / "trainer_state.pt")
    with pytest.raises(UserInputError, match=r"torch 1.13.1\+cu117.*--init .*last.pt -o NEW_FOLDER"):
        read_state(copy)
    assert read_state(run)["torch_version"] == str(torch.__version__)


def test_precision_auto_trains_in_bf16_on_native_bf16_cpus_only(tmp_path, monkeypatch):
    """bf16 autocast only where AMX (or AVX512-BF16) makes it fast; --precision fp32 keeps full precision."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    cases = [phantom("a"), phantom("b", 1)]

    def stage1_weights(name: str, precision: str, amx: bool) -> dict:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
        config = dataclasses.replace(QUICK, stages=(1,), precision=precision)
        run = Trainer(cases, tmp_path / name, config, model_config=TINY, device="cpu", cache=tmp_path / "c").run()
        assert run.exit_code == 0
        return load_checkpoint(run.last).stage1

    try:
        full = stage1_weights("fp32", "fp32", amx=True)
        plain_cpu = stage1_weights("auto-plain", "auto", amx=False)
        amx_cpu = stage1_weights("auto-amx", "auto", amx=True)
    finally:
        torch.set_num_threads(threads)
    floats = [key for key, value in full.items() if value.is_floating_point()]
    assert all(torch.equal(plain_cpu[key], full[key]) for key in floats)
    assert any(not torch.equal(amx_cpu[key], full[key]) for key in floats)
    assert all(torch.isfinite(amx_cpu[key]).all() for key in floats)
    with pytest.raises(UserInputError, match="--precision 'fp16'"):
        dataclasses.replace(QUICK, precision="fp16")


def test_liver_distillation_needs_init_keeps_its_teacher_in_the_state_and_resumes(tmp_path):
    cases = [phantom("a"), phantom("b", 1)]
    options = dict(device="cpu", cache=tmp_path / "cache")
    start = Trainer(cases, tmp_path / "start", QUICK, model_config=TINY, **options).run()
    config = dataclasses.replace(QUICK, stages=(2,), epochs=2, liver_distillation=1.0)
    with pytest.raises(UserInputError, match="--init MODEL.pt"):
        Trainer(cases, tmp_path / "alone", config, model_config=TINY, **options).run()
    interrupt = InterruptAt("stage2")
    stopped = Trainer(cases, tmp_path / "tuned", config, init=start.best, progress=interrupt, **options).run()
    assert stopped.exit_code == 130
    teacher = load_checkpoint(start.best).stage2
    kept = read_state(tmp_path / "tuned")["liver_teacher"]
    assert kept.keys() == teacher.keys() and all(torch.equal(kept[k], v) for k, v in teacher.items())
    resumed = Trainer(cases, tmp_path / "tuned", resume=True, **options).run()
    assert resumed.exit_code == 0 and resumed.stage_epochs == {"stage2": 2}
    records = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train"]["liver_distillation"]) for r in records) and len(records) == 2
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt").stage2
    assert any(not torch.equal(tuned[k], v) for k, v in teacher.items() if v.is_floating_point())


class _BlasThreadsSeen(torch.utils.data.Dataset):
    """One item: the BLAS thread counts of the process that prepares it."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> list[int]:
        return _blas_threads()


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_training_processes_run_one_blas_thread_per_torch_thread(tmp_path):
    """numpy's BLAS would start a thread per core in the trainer and in every loader worker; beside other processes
    they spin for cores those hold (sample preparation 1.6x slower on 2 cores)."""
    from liver_e2net.training.trainer import _worker_init
    from threadpoolctl import threadpool_limits
    from torch.utils.data import DataLoader

    if not _blas_threads():
        pytest.skip("this numpy loads no BLAS library that threadpoolctl can see")
    threads, seen = torch.get_num_threads(), []
    with threadpool_limits(2, user_api="blas"):
        torch.set_num_threads(1)
        try:
            Trainer([phantom("a"), phantom("b", 1)], tmp_path / "run", dataclasses.replace(QUICK, stages=(1,)),
                    model_config=TINY, device="cpu", cache=tmp_path / "cache",
                    progress=lambda *args, **kwargs: seen.append(set(_blas_threads()))).run()  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        assert seen and all(counts == {1} for counts in seen) and set(_blas_threads()) == {2}  # restored
        loader = DataLoader(_BlasThreadsSeen(), batch_size=None, num_workers=1, worker_init_fn=_worker_init)
        assert [set(seen) for seen in loader] == [{1}] and set(_blas_threads()) == {2}
