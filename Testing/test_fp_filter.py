"""The object-level tumor false-positive filter: features, the forest as arrays, storage in the checkpoint
(no pickle, tied to its model's weights), the --fp-filter option and train-fp-filter end to end on real CT."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from core_helpers import REPO, biased_checkpoint, shared_case
from liver_e2net.checkpoint import (
    Checkpoint,
    load_checkpoint,
    random_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)
from liver_e2net.cli import main
from liver_e2net.config import lite_config
from liver_e2net.errors import UserInputError
from liver_e2net.fp_filter import (
    BOUNDARY_DISTANCE_CAP_MM,
    FEATURE_NAMES,
    FalsePositiveFilter,
    TreeEnsemble,
    apply_filter,
    candidate_features,
    export_forest,
    fit_filter,
)

SPACING = (0.5, 0.5, 2.0)  # (x, y, z) mm: anisotropic, as CT is


def feature(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, FEATURE_NAMES.index(name)]


@pytest.fixture
def scene() -> dict[str, np.ndarray]:
    """A 3-slice rod along x (10 x 2 voxels in-plane) and a single voxel, inside a box-shaped liver."""
    components = np.zeros((10, 20, 30), np.int32)
    components[2:5, 4:6, 3:13] = 1
    components[7, 15, 25] = 2
    liver = np.zeros(components.shape, bool)
    liver[1:9, 2:18, 2:28] = True
    ct = np.where(liver, 100.0, -1000.0)
    ct[2:5, 4:6, 3:13] = [[30.0], [50.0]]  # the rod's two rows: 30 and 50 HU
    probability = np.where(components > 0, 0.8, 0.1)
    probability[2, 4, 3] = 0.95
    return {"components": components, "liver": liver, "ct": ct, "probability": probability}


def features_of(scene: dict[str, np.ndarray]) -> np.ndarray:
    return candidate_features(
        scene["components"], 2, scene["ct"], scene["probability"], scene["liver"], SPACING
    )


def test_features_of_hand_built_candidates(scene) -> None:
    features = features_of(scene)
    assert features.shape == (2, len(FEATURE_NAMES)) and np.isfinite(features).all()
    # Rod: 60 voxels of 0.5 mm^3; 3 slices of 2 mm; a solid 6 x 1 x 5 mm box (variance L^2 / 12 per axis).
    assert feature(features, "volume_ml") == pytest.approx([60 * 0.5 / 1000, 0.5 / 1000])
    assert feature(features, "z_extent_mm") == pytest.approx([6.0, 2.0])
    eigenvalues = features[0, [FEATURE_NAMES.index(f"eigenvalue_{i}_mm2") for i in (1, 2, 3)]]
    assert eigenvalues == pytest.approx([36 / 12, 25 / 12, 1 / 12])
    assert feature(features, "elongation")[0] == pytest.approx(np.sqrt(36 / 25))
    assert feature(features, "flatness")[0] == pytest.approx(5.0)
    assert feature(features, "elongation")[1] == pytest.approx(4.0)  # one voxel: 2 mm tall, 0.5 mm wide
    area = 2 * (6 * 1 + 6 * 5 + 1 * 5)
    assert feature(features, "compactness")[0] == pytest.approx(36 * np.pi * 30.0**2 / area**3)
    assert feature(features, "mean_hu")[0] == pytest.approx(40.0)
    assert feature(features, "std_hu")[0] == pytest.approx(10.0)
    assert feature(features, "contrast_hu") == pytest.approx([-60.0, 0.0])
    assert feature(features, "max_probability") == pytest.approx([0.95, 0.8])
    # The voxel at (z 7, y 15, x 25): the liver ends 3 voxels away in y and x (1.5 mm), 2 slices in z (4 mm).
    assert feature(features, "mean_boundary_distance_mm")[1] == pytest.approx(1.5)
    assert feature(features, "std_boundary_distance_mm")[1] == 0.0


def test_features_of_a_crop_holding_the_liver_equal_the_full_volume(scene) -> None:
    """What lets the pipeline compute them on its liver box; the liver touching the crop edge stays a border."""
    crop = (slice(1, 9), slice(2, 18), slice(2, 28))
    cropped = {key: value[crop] for key, value in scene.items()}
    np.testing.assert_allclose(features_of(cropped), features_of(scene))


def test_depth_in_the_liver_is_capped() -> None:
    components = np.zeros((30, 120, 120), np.int32)
    components[15, 60, 60] = 1
    liver = np.ones(components.shape, bool)  # the nearest border is 15 slices (30 mm) away
    features = candidate_features(components, 1, np.zeros(liver.shape), np.ones(liver.shape), liver, SPACING)
    assert feature(features, "mean_boundary_distance_mm")[0] == BOUNDARY_DISTANCE_CAP_MM


def test_boundary_distances_equal_scipys_exact_transform() -> None:
    """The edt package replaced scipy's transform for speed: each candidate's depth agrees to 1e-4 mm."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    zz, yy, xx = np.indices((24, 60, 70))
    liver = ((zz - 12) / 11.0) ** 2 + ((yy - 30) / 26.0) ** 2 + ((xx - 35) / 31.0) ** 2 < 1
    components = np.zeros(liver.shape, np.int32)
    for k, (z, y, x) in enumerate(rng.integers((4, 8, 8), (20, 52, 62), size=(6, 3)), start=1):
        components[z - 1 : z + 2, y - 2 : y + 3, x - 2 : x + 3] = k
    components[~liver] = 0
    count = int(components.max())
    features = candidate_features(components, count, np.zeros(liver.shape), np.ones(liver.shape), liver, SPACING)
    depth = np.minimum(ndimage.distance_transform_edt(liver, sampling=SPACING[::-1]), BOUNDARY_DISTANCE_CAP_MM)
    expected = [depth[components == k].mean() for k in range(1, count + 1)]
    assert feature(features, "mean_boundary_distance_mm") == pytest.approx(expected, abs=1e-4)


def test_exported_forest_equals_sklearn() -> None:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, len(FEATURE_NAMES))) * rng.uniform(0.01, 100, len(FEATURE_NAMES))
    is_true = features[:, 0] + features[:, 3] / 50 + rng.normal(scale=0.5, size=300) > 0.2
    forest = RandomForestClassifier(40, class_weight="balanced", random_state=1).fit(features, is_true)
    ensemble = export_forest(forest)
    unseen = rng.normal(size=(1000, len(FEATURE_NAMES))) * rng.uniform(0.01, 100, len(FEATURE_NAMES))
    for data in (features, unseen):
        np.testing.assert_allclose(
            ensemble.predict_proba(data), forest.predict_proba(data), rtol=0, atol=1e-12
        )
    trained, accuracy = fit_filter(features, is_true, seed=3, trees=16)
    assert trained.children_left.shape[0] == 16 and 0.5 < accuracy["cv_accuracy"] <= 1.0


def test_filter_accuracy_counts_the_rare_true_positives() -> None:
    """4 % true candidates, separable by volume: the held-out estimate must see them (out-of-bag votes did not)."""
    rng = np.random.default_rng(0)
    is_true = np.arange(500) < 20
    features = rng.normal(size=(500, len(FEATURE_NAMES)))
    features[:, :5] += np.where(is_true, 5.0, 0.0)[:, None]  # size and shape set true positives apart
    _, accuracy = fit_filter(features, is_true, trees=32)
    assert accuracy["cv_folds"] == 5 and accuracy["cv_balanced_accuracy"] > 0.9


def test_too_few_or_one_class_candidates_are_refused() -> None:
    with pytest.raises(UserInputError, match="0 false-positive"):
        fit_filter(np.zeros((20, len(FEATURE_NAMES))), np.ones(20, bool))


def stump(threshold_ml: float, fingerprint: str) -> FalsePositiveFilter:
    """A one-split forest: volume_ml <= threshold -> false positive, else true positive."""
    return FalsePositiveFilter(
        TreeEnsemble(
            np.array([[1, -1, -1]], np.int32),
            np.array([[2, -1, -1]], np.int32),
            np.array([[FEATURE_NAMES.index("volume_ml"), 0, 0]], np.int32),
            np.array([[threshold_ml, 0.0, 0.0]]),
            np.array([[0.5, 0.0, 1.0]]),
        ),
        fingerprint,
    )


def test_apply_filter_turns_rejected_candidates_into_liver(scene) -> None:
    label = scene["liver"].astype(np.uint8)
    label[scene["components"] > 0] = 2
    filtered, rejected = apply_filter(label, scene["ct"], scene["probability"], SPACING, stump(0.001, "x"))
    assert rejected == 1
    assert np.array_equal(filtered == 2, scene["components"] == 1)  # the rod stays, the speck is liver
    assert np.array_equal(filtered >= 1, label >= 1)


def test_damaged_tree_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="out of order"):
        TreeEnsemble(*(np.zeros((1, 2), dtype) for dtype in (np.int32,) * 3 + (float,) * 2))  # 0 -> 0: a loop


def checkpoint_with_filter(seed: int = 0) -> Checkpoint:
    checkpoint = random_checkpoint(lite_config(), seed=seed)
    checkpoint.fp_filter = stump(0.5, weights_fingerprint(checkpoint.stage2))
    return checkpoint


def test_filter_round_trip_with_weights_only_loading(tmp_path: Path, scene) -> None:
    path = save_checkpoint(checkpoint_with_filter(), tmp_path / "model.pt", half=True)
    payload = torch.load(path, weights_only=True)  # tensors and plain data only: nothing to unpickle
    assert isinstance(payload["fp_filter"]["split_threshold"], torch.Tensor)
    loaded = load_checkpoint(path)
    assert loaded.fp_filter is not None and "false-positive filter" in loaded.describe()
    features = features_of(scene)
    assert np.array_equal(loaded.fp_filter.keep(features), stump(0.5, "").keep(features))
    # fp16 storage (export-model) keeps the fingerprint: it is taken over fp16-rounded weights.
    assert loaded.fp_filter.model_fingerprint == weights_fingerprint(loaded.stage2)


def test_a_filter_keeps_the_lesion_size_it_was_trained_at(tmp_path: Path) -> None:
    checkpoint = checkpoint_with_filter()
    checkpoint.fp_filter = dataclasses.replace(checkpoint.fp_filter, min_lesion_ml=0.01)
    path = save_checkpoint(checkpoint, tmp_path / "model.pt")
    assert load_checkpoint(path).fp_filter.min_lesion_ml == 0.01
    older = checkpoint.fp_filter.to_payload()
    del older["min_lesion_ml"]  # filters written before the size was stored were all trained at 0.05
    assert FalsePositiveFilter.from_payload(older, "old.pt").min_lesion_ml == 0.05
    with pytest.raises(UserInputError, match="old.pt: its false-positive filter is damaged"):
        FalsePositiveFilter.from_payload({**older, "min_lesion_ml": -1.0}, "old.pt")


def test_a_pickled_object_in_the_filter_is_never_executed(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = save_checkpoint(checkpoint_with_filter(), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["fp_filter"]["training"] = Payload()
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="not a readable"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_filter_trained_for_other_weights_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(checkpoint_with_filter(), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["stage2"] = random_checkpoint(lite_config(), seed=1).stage2
    torch.save(payload, path)
    with pytest.raises(UserInputError, match=r"model\.pt.*trained for another model"):
        load_checkpoint(path)
    foreign = checkpoint_with_filter()
    foreign.stage2 = random_checkpoint(lite_config(), seed=1).stage2
    with pytest.raises(UserInputError, match="another model"):
        save_checkpoint(foreign, tmp_path / "foreign.pt")
    assert not (tmp_path / "foreign.pt").exists()


def test_export_model_keeps_the_filter_of_its_stage_2(tmp_path: Path, capsys) -> None:
    source = save_checkpoint(checkpoint_with_filter(), tmp_path / "model.pt")
    assert main(["export-model", "--stage1", str(source), "-o", str(tmp_path / "half.pt")]) == 0  # fp16
    assert load_checkpoint(tmp_path / "half.pt").fp_filter is not None


def test_the_bundled_model_shows_its_held_out_accuracy_and_any_filter_is_its_own() -> None:
    """The description users read is the real held-out CT's accuracy; a filter, if shipped, fits the weights."""
    from liver_e2net.checkpoint import weights_fingerprint

    checkpoint = load_checkpoint(REPO / "Resources" / "Models" / "liver_e2net_lite.pt")
    (held_out,) = checkpoint.metadata["held_out"]
    assert held_out["case"] == "case01" and "case01" not in checkpoint.metadata["training_cases"]
    assert "held-out case01: liver Dice" in checkpoint.describe() and "val Dice" not in checkpoint.describe()
    if checkpoint.fp_filter is not None:
        assert checkpoint.fp_filter.model_fingerprint == weights_fingerprint(checkpoint.stage2)
        assert checkpoint.fp_filter.feature_names == FEATURE_NAMES


def test_segment_fp_filter_on_without_a_filter_writes_nothing(tmp_path: Path, capsys, model) -> None:
    ct = shared_case("case04_ct.nii.gz")
    output, report = tmp_path / "out.nii.gz", tmp_path / "report.json"
    code = main(
        ["segment", str(ct), "-o", str(output), "--report", str(report), "--model", str(model)]
        + ["--fp-filter", "on", "--progress", "none"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "carries no false-positive filter" in err and str(model) in err
    batch = tmp_path / "batch"
    assert main(["segment-batch", str(ct), "-o", str(batch), "--model", str(model), "--fp-filter", "on"]) == 2
    assert "train-fp-filter" in capsys.readouterr().err
    assert not output.exists() and not report.exists() and not batch.exists()


def case_list(tmp_path: Path, cases: list[tuple[Path, Path]]) -> Path:
    path = tmp_path / "cases.json"
    entries = [{"name": ct.name.split("_")[0], "image": str(ct), "label": str(label)} for ct, label in cases]
    path.write_text(json.dumps(entries))
    return path


def test_train_fp_filter_with_one_class_of_candidates_writes_nothing(tmp_path: Path, capsys, model) -> None:
    """The session model paints its whole liver box tumor: one false positive per case, never a true one."""
    data = case_list(tmp_path, [(shared_case("case04_ct.nii.gz"), shared_case("case04_label.nii.gz"))])
    out = tmp_path / "filtered.pt"
    code = main(
        ["train-fp-filter", "--model", str(model), "--data", str(data), "-o", str(out)]
        + ["--synthetic-copies", "1", "--threads", "1", "--progress", "none"]
    )
    assert code == 2 and "0 true-positive" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module", autouse=True)
def single_threshold_tumors():
    """The speckled model's tumor probability is 0.5 give or take float noise, so the hysteresis of tumor_mask would
    join every speckle through its halo into one component: here tumors are cut at the seed threshold alone."""
    from liver_e2net import postprocessing

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(postprocessing, "TUMOR_EXTENT", postprocessing.TUMOR_SEED)
        yield


@pytest.fixture(scope="module")
def speckled(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model, CT, reference): a random model whose tumor output is speckle on case02, and a reference that
    calls its larger half of the speckles tumors, so the model's own candidates hold both classes."""
    from liver_e2net.metrics import label_components
    from liver_e2net.pipeline import Segmenter

    folder = tmp_path_factory.mktemp("speckled")
    speckled = biased_checkpoint(liver_bias=0.5, tumor_bias=0.0)
    speckled.metadata["held_out"] = [{"case": "case01", "liver_dice": 0.9, "tumor_dice": 0.5}]  # without a filter
    model = save_checkpoint(speckled, folder / "speckled.pt")
    ct_path, label_path = shared_case("case02_ct.nii.gz"), shared_case("case02_label.nii.gz")
    ct = sitk.ReadImage(str(ct_path))
    predicted = Segmenter(model, device="cpu", threads=1, fp_filter="off").segment(ct).label
    components, count = label_components(predicted == 2)
    assert count >= 10, "the speckled model no longer speckles: pick another tumor bias"
    sizes = np.bincount(components.ravel())[1:]
    larger = 1 + np.flatnonzero(sizes >= np.median(sizes))
    reference = np.minimum(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))), 1)
    reference[np.isin(components, larger)] = 2
    image = sitk.GetImageFromArray(reference.astype(np.uint8))
    image.CopyInformation(ct)
    shutil.copy(ct_path, folder / "case02_ct.nii.gz")
    sitk.WriteImage(image, str(folder / "case02_label.nii.gz"))
    return model, folder / "case02_ct.nii.gz", folder / "case02_label.nii.gz"


def test_phase_and_noise_copies_add_candidates_and_leave_the_others_as_they_were(speckled) -> None:
    from liver_e2net.pipeline import Segmenter
    from liver_e2net.training.fp_candidates import collect_candidates
    from liver_e2net.training.sources import CasePaths

    model, ct, label = speckled
    segmenter = Segmenter(model, device="cpu", threads=1, fp_filter="off")
    sources = [CasePaths("case02", ct, label)]
    plain = collect_candidates(segmenter, sources, synthetic_copies=1)
    phased = collect_candidates(segmenter, sources, synthetic_copies=1, phase_copies=1, noise_copies=1)
    assert [run["phase"] for run in phased.runs[:2]] == ["portal", "portal"]
    assert phased.runs[2]["phase"] in ("arterial", "delayed", "unenhanced") and phased.runs[2]["candidates"] > 0
    noisy = phased.runs[3]
    assert noisy["phase"] == "portal" and 5 <= noisy["noise_hu"] <= 20 and noisy["candidates"] > 0
    assert [run["noise_hu"] for run in phased.runs[:3]] == [0, 0, 0]
    before = len(plain.is_true)
    assert np.array_equal(phased.features[:before], plain.features)  # the recipe's copies are unchanged
    assert np.array_equal(phased.is_true[:before], plain.is_true)


def test_train_fp_filter_end_to_end_then_segment_with_it(tmp_path: Path, capsys, speckled) -> None:
    model, ct, label = speckled
    out = tmp_path / "filtered.pt"
    command = ["train-fp-filter", "--model", str(model), "--data", str(case_list(tmp_path, [(ct, label)]))]
    command += ["-o", str(out), *"--synthetic-copies 1 --trees 64 --threads 1 --progress none".split()]
    assert main([*command, "--min-lesion-ml", "nan"]) == 2 and not out.exists()
    assert "--min-lesion-ml nan" in capsys.readouterr().err
    assert main([*command, "--noise-copies", "-1"]) == 2 and not out.exists()
    assert "--noise-copies" in capsys.readouterr().err
    assert main([*command, "--min-lesion-ml", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "true" in printed and "cross-validated accuracy" in printed and str(out) in printed
    checkpoint = load_checkpoint(out)
    training = checkpoint.fp_filter.training
    assert training["true_positives"] >= 3 and training["false_positives"] >= 3
    assert training["cases"] == ["case02"] and training["synthetic_copies"] == 1
    assert checkpoint.fp_filter.model_fingerprint == weights_fingerprint(load_checkpoint(model).stage2)
    assert "held_out" not in checkpoint.metadata  # measured without this filter, so no longer this model's
    assert checkpoint.fp_filter.min_lesion_ml == 0.01  # the size its candidates were drawn at
    assert main(["info", "--model", str(out)]) == 0
    assert "tumors under 0.01 ml dropped" in capsys.readouterr().out

    report = tmp_path / "report.json"
    segment = ["segment", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(out), "--threads", "1"]
    assert main([*segment, "--report", str(report), "--progress", "none"]) == 0  # auto: the filter is used
    used = json.loads(report.read_text())
    assert used["false_positive_filter"]["used"] and used["false_positive_filter"]["rejected_candidates"] >= 1
    assert used["min_lesion_ml"] == 0.01  # the filter runs at the size it was trained at
    assert main([*segment, "--report", str(report), "--fp-filter", "off", "--progress", "none"]) == 0
    unfiltered = json.loads(report.read_text())
    assert unfiltered["false_positive_filter"] == {"used": False, "rejected_candidates": 0}
    assert unfiltered["min_lesion_ml"] == 0.05  # without it, the default
    assert main([*segment, "--report", str(report), "--min-lesion-ml", "0.2", "--progress", "none"]) == 0
    assert json.loads(report.read_text())["min_lesion_ml"] == 0.2  # the user's size wins
