"""Tumor-specific training options: the weighted tumor BCE, synthetic size weights, synthetic validation tumors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from liver_e2net.cli import main
from liver_e2net.errors import UserInputError
from liver_e2net.models import E2NetOutput
from liver_e2net.training import TrainConfig, TrainingCase
from liver_e2net.training.cache import prepare_cases
from liver_e2net.training.losses import stage2_loss
from liver_e2net.training.synthetic_tumors import SyntheticTumorConfig
from liver_e2net.training.validation_tumors import with_synthetic_tumors
from scipy import ndimage


def _output_missing_the_tumor() -> tuple[E2NetOutput, torch.Tensor, torch.Tensor]:
    masks = torch.zeros(1, 2, 32, 32)
    masks[:, 0, 4:28, 4:28] = 1
    masks[:, 1, 12:16, 12:16] = 1
    logits = torch.where(masks[:, :1] > 0, 5.0, -5.0).repeat(
        1, 2, 1, 1
    )  # liver right, tumor predicted as liver
    logits[:, 1] = -5.0
    return E2NetOutput(logits, logits, logits), masks, torch.zeros_like(masks)


def test_tumor_pos_weight_raises_the_loss_of_a_missed_tumor_only():
    output, masks, edges = _output_missing_the_tumor()
    plain, _ = stage2_loss(output, masks, edges)
    weighted, parts = stage2_loss(output, masks, edges, tumor_pos_weight=10.0)
    assert weighted > plain
    # The missed tumor pixels (16 of 2 x 1024 per head) carry ~5 nats each: 9 x 16 x 5 / 2048 more per head.
    assert float(weighted - plain) == pytest.approx(2 * 9 * 16 * 5.0067 / 2048, rel=1e-3)
    output_without_tumor = E2NetOutput(*(torch.where(masks > 0, 5.0, -5.0) for _ in range(3)))
    perfect_plain, _ = stage2_loss(output_without_tumor, masks, edges)
    perfect_weighted, _ = stage2_loss(output_without_tumor, masks, edges, tumor_pos_weight=10.0)
    assert float(perfect_weighted) == pytest.approx(float(perfect_plain), abs=0.01)


def test_lesion_loss_counts_a_missed_small_lesion_as_much_as_a_large_one():
    masks = torch.zeros(1, 2, 64, 64)
    masks[:, 0, 4:60, 4:60] = 1
    masks[:, 1, 10:40, 10:40] = 1  # a 30-pixel lesion
    masks[:, 1, 50:53, 50:53] = 1  # and a 3-pixel one
    found_both = torch.where(masks > 0, 20.0, -20.0)
    missed_small = found_both.clone()
    missed_small[:, 1, 50:53, 50:53] = -20.0
    edges = torch.zeros_like(masks)

    def loss(logits, weight):
        return float(stage2_loss(E2NetOutput(logits, logits, logits), masks, edges, lesion_loss_weight=weight)[0])

    # The paper's per-image IoU barely notices the small miss (9 of 909 tumor pixels) ...
    assert loss(missed_small, 0) - loss(found_both, 0) < 0.05
    # ... the lesion-wise loss scores it as one of two lesions missed (IoU 1/10 with the smoothing), per head.
    assert loss(missed_small, 1) - loss(found_both, 1) == pytest.approx(2 * 0.5 * 9 / 10, abs=0.05)
    # Nothing changes on images without tumors.
    masks[:, 1] = 0
    no_tumor = torch.where(masks > 0, 8.0, -8.0)
    assert loss(no_tumor, 1) == pytest.approx(loss(no_tumor, 0))


def test_a_negative_lesion_loss_weight_is_refused():
    with pytest.raises(UserInputError, match="--lesion-loss-weight -1"):
        TrainConfig(lesion_loss_weight=-1.0)


def _liver_only_case(name: str, seed: int = 0) -> TrainingCase:
    shape = (24, 96, 96)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    liver = ((z - 12) / 11) ** 2 + ((y - 48) / 40) ** 2 + ((x - 48) / 40) ** 2 <= 1
    ct = np.where(liver, 110.0, -1000.0) + np.random.default_rng(seed).normal(0, 5, shape)
    return TrainingCase(name, ct.astype(np.int16), liver.astype(np.uint8), (1.5, 1.5, 2.0))


def test_validation_cases_without_tumors_get_the_same_synthetic_tumors_every_time(tmp_path):
    cases = prepare_cases([_liver_only_case("a"), _liver_only_case("b", 1)], tmp_path)
    config = TrainConfig(synthetic_tumors=0.5, synthetic_size_weights=(0, 0, 1, 0)).synthetic_tumor_config()
    first = with_synthetic_tumors(cases, seed=3, config=config)
    again = with_synthetic_tumors(cases, seed=3, config=config)
    for original, painted, repeat in zip(cases, first, again):
        assert not original.tumor_slices and painted.tumor_slices
        tumor = painted.label == 2
        assert tumor.any() and np.array_equal(tumor, repeat.label == 2)
        assert np.all(original.label[tumor] == 1)  # painted inside the liver
        assert (np.asarray(original.label) == 2).sum() == 0  # the cached case itself is left untouched
        assert not np.array_equal(np.asarray(original.ct), painted.ct)
    # Cases that already hold tumors are kept as they are.
    assert with_synthetic_tumors(first, seed=4, config=config)[0] is first[0]
    # New runs (fixed_validation_tumors) are scored on the same tumors whatever their seed and size weights.
    runs = [TrainConfig(synthetic_tumors=0.5, seed=seed, synthetic_size_weights=weights, fixed_validation_tumors=True)
            for seed, weights in ((0, (0.2, 0.35, 0.3, 0.15)), (7, (0, 0, 0, 1)))]
    labels = [with_synthetic_tumors(cases, *run.validation_tumors())[0].label for run in runs]
    assert np.array_equal(labels[0], labels[1]) and (labels[0] == 2).any()
    older = TrainConfig(synthetic_tumors=0.5, seed=7)  # a run from before the field: its seed draws the tumors
    assert older.validation_tumors()[0] == 7


def test_new_runs_validate_on_tumors_of_every_size_and_kind_some_at_the_border(tmp_path):
    cases = prepare_cases([_liver_only_case("a")], tmp_path)
    earlier = TrainConfig(fixed_validation_tumors=True)  # a run of 2026-12-01 to -03, resumed: its tumors stay
    new = TrainConfig(fixed_validation_tumors=True, validation_tumor_range=True)  # what train makes now
    assert earlier.validation_tumors()[1] == SyntheticTumorConfig()
    seed, config = new.validation_tumors()
    assert seed == 0 and config.allow_border and config.count_range[0] >= 2
    assert config.size_class_weights[-1] >= 0.3  # large tumors weigh as much as small ones
    assert ndimage.label(with_synthetic_tumors(cases, seed, config)[0].label == 2)[1] >= 2
    depth_mm = ndimage.distance_transform_edt(np.asarray(cases[0].label) >= 1, sampling=(2.0, 1.5, 1.5))
    shallowest = [depth_mm[with_synthetic_tumors(cases, s, config)[0].label == 2].min() for s in range(4)]
    assert min(shallowest) < config.liver_margin_mm  # some reach the capsule, as real ones do


def test_size_weights_steer_the_synthetic_diameters():
    large = TrainConfig(synthetic_size_weights=(0, 0, 0, 1)).synthetic_tumor_config()
    assert large.size_class_weights == (0, 0, 0, 1)
    with pytest.raises(UserInputError, match="positive sum"):
        TrainConfig(synthetic_size_weights=(0, 0, 0, 0))


def test_kind_weights_steer_which_kinds_training_paints():
    """--synthetic-kind-weights: a run can ask for the kinds its network misses (hyperdense ones, here)."""
    from liver_e2net.training.synthetic_tumors import insert_tumors

    case = _liver_only_case("a")
    config = TrainConfig(synthetic_kind_weights=(0, 1, 0, 0, 0, 0, 0, 0)).synthetic_tumor_config()
    kinds = set()
    for seed in range(4):
        _, _, records = insert_tumors(case.ct, case.label, case.spacing, np.random.default_rng(seed), config)
        kinds |= {record.kind for record in records}
    assert kinds == {"hyperdense"}
    assert TrainConfig().synthetic_tumor_config().kind_weights == SyntheticTumorConfig().kind_weights
    for weights in ((0,) * 8, (-1, 2, 0, 0, 0, 0, 0, 0)):
        with pytest.raises(UserInputError, match="one weight >= 0 per kind of hypodense, .* positive sum"):
            TrainConfig(synthetic_kind_weights=weights)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--tumor-pos-weight", "0"], "--tumor-pos-weight 0.0: must be > 0"),
        (["--synthetic-kind-weights", "1,2,3"], "give 8 weights, one per kind (hypodense, hyperdense"),
        (["--synthetic-size-weights", "1,2"], "give 4 weights"),
        (["--synthetic-size-weights", "a,b,c,d"], "comma-separated numbers"),
    ],
)
def test_bad_tumor_options_exit_2(tmp_path, capsys, option, message):
    ct = tmp_path / "ct.nii.gz"
    try:
        code = main(["train", "--case", str(ct), str(ct), "-o", str(tmp_path / "run"), *option])
    except SystemExit as exit:  # argparse's own type errors
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _closest_tumor_to_the_liver_border_mm(samples, case, count: int) -> float:
    """Over `count` synthetic slabs: the smallest in-plane distance (mm) from a tumor voxel to non-liver."""
    from scipy import ndimage

    closest = np.inf
    rows, columns = slice(0, case.shape[1]), slice(0, case.shape[2])
    for index in range(count):
        _, label, _ = samples._synthetic(case, 12, rows, columns, samples.rng(index))
        for plane in label:
            if (plane == 2).any():
                depth = ndimage.distance_transform_edt(plane > 0, sampling=case.spacing[1::-1])
                closest = min(closest, float(depth[plane == 2].min()))
    return closest


def test_border_probability_lets_synthetic_tumors_reach_the_liver_border(tmp_path):
    from liver_e2net.config import lite_config
    from liver_e2net.training.samples import Stage2Samples

    (case,) = prepare_cases([_liver_only_case("a")], tmp_path)
    inside, anywhere = (
        Stage2Samples(
            [case], lite_config(), TrainConfig(synthetic_tumors=1.0, synthetic_border_probability=p)
        )
        for p in (0.0, 1.0)
    )
    assert _closest_tumor_to_the_liver_border_mm(inside, case, 12) >= 3.0  # the generator's liver margin
    assert _closest_tumor_to_the_liver_border_mm(anywhere, case, 24) < 3.0
    with pytest.raises(UserInputError, match="--synthetic-border-probability 2"):
        TrainConfig(synthetic_border_probability=2)
