"""Synthetic tumors: placement rules, size in mm, changed voxels, contrast, reproducibility, preview PNG."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from liver_e2net import cli
from liver_e2net.errors import UserInputError
from liver_e2net.training.synthetic_tumors import SyntheticTumorConfig, insert_tumors, insert_tumors_slab
from scipy import ndimage

DATA = Path("/work/shared/data")
SPACING = (0.7, 0.7, 2.5)  # (x, y, z) mm, as SimpleITK gives it
SMALL_TUMORS = SyntheticTumorConfig(
    size_classes_mm=((5.0, 10.0), (10.0, 16.0)), size_class_weights=(0.5, 0.5)
)


def make_phantom(spacing=SPACING, shape=(40, 128, 128), seed=0, vessels=True, real_tumor=True):
    """Ellipsoidal liver (~100 HU, noisy) in fat, with bright tubes as vessels and one real tumor."""
    rng = np.random.default_rng(seed)
    z, y, x = (
        (np.arange(n) - n // 2).reshape([-1 if a == axis else 1 for a in range(3)]) * s
        for axis, (n, s) in enumerate(zip(shape, spacing[::-1], strict=True))
    )
    label = np.zeros(shape, np.uint8)
    label[(x / 40) ** 2 + (y / 40) ** 2 + (z / 40) ** 2 <= 1] = 1
    ct = np.where(label == 1, 100.0, -100.0) + rng.normal(0, 10, shape)
    if vessels:
        tubes = np.zeros(shape, bool)
        for cx, cy in ((-15, -15), (-15, 12), (10, -20)):
            tubes |= np.broadcast_to((x - cx) ** 2 + (y - cy) ** 2 <= 1.5**2, shape)
        tubes |= np.broadcast_to((y - 18) ** 2 + (z - 5) ** 2 <= 1.5**2, shape)
        ct[tubes & (label == 1)] = 200 + rng.normal(0, 10, np.count_nonzero(tubes & (label == 1)))
    if real_tumor:
        real = (x - 20) ** 2 + y**2 + z**2 <= 7**2
        label[real] = 2
        ct[real] = 60
    return ct.astype(np.int16), label


def spacing_zyx(spacing=SPACING):
    return np.asarray(spacing[::-1], dtype=float)


def new_tumor(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (after == 2) & (before != 2)


def vessels_of(ct, label, spacing, config):
    """The generator's vessel definition: smoothed liver voxels above the liver's percentile."""
    threshold = np.percentile(ct[label == 1], config.vessel_percentile)
    smooth = ndimage.gaussian_filter(ct.astype(np.float32), 1.0 / spacing_zyx(spacing), truncate=2.0)
    return (smooth > threshold) & (label == 1)


def assert_placement_rules(ct, label, new_label, records, spacing, config):
    """Inside the liver with its margin, clear of real tumors and of vessels, one component per record."""
    synthetic = new_tumor(label, new_label)
    sampling = spacing_zyx(spacing)
    assert records and synthetic.any()
    assert np.all(label[synthetic] == 1)
    depth_in_liver = ndimage.distance_transform_edt(label >= 1, sampling=sampling)
    assert depth_in_liver[synthetic].min() > config.liver_margin_mm
    if (label == 2).any():
        to_real = ndimage.distance_transform_edt(label != 2, sampling=sampling)
        assert to_real[synthetic].min() > config.change_margin_mm
    to_synthetic = ndimage.distance_transform_edt(~synthetic, sampling=sampling)
    assert not np.any(vessels_of(ct, label, spacing, config) & (to_synthetic <= config.vessel_margin_mm))
    assert ndimage.label(synthetic)[1] == len(records)
    assert np.all(new_label[~synthetic] == label[~synthetic])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_tumors_inside_liver_clear_of_tumors_and_vessels(seed):
    ct, label = make_phantom()
    config = replace(SMALL_TUMORS, count_range=(3, 3))
    new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(seed), config)
    assert_placement_rules(ct, label, new_label, records, SPACING, config)
    assert ct.dtype == new_ct.dtype and new_label.dtype == label.dtype


@pytest.fixture(scope="module")
def case01_crop():
    """case01 around its two real tumors: ~1 M voxels, so the test stays fast."""
    sitk = pytest.importorskip("SimpleITK")
    if not (DATA / "case01_ct.nii.gz").is_file():
        pytest.skip("case01 is absent from /work/shared/data")
    image = sitk.ReadImage(str(DATA / "case01_ct.nii.gz"))
    box = (slice(80, 110), slice(120, 260), slice(90, 350))
    ct = sitk.GetArrayFromImage(image)[box]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "case01_label.nii.gz")))[box]
    return ct, label, image.GetSpacing()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_case01_tumors_inside_liver_clear_of_real_tumors_and_vessels(case01_crop, seed):
    ct, label, spacing = case01_crop
    assert (label == 2).any()
    config = replace(SMALL_TUMORS, count_range=(1, 1))  # one at a time: vessels are judged on the original CT
    _, new_label, records = insert_tumors(ct, label, spacing, np.random.default_rng(seed), config)
    assert_placement_rules(ct, label, new_label, records, spacing, config)
    assert np.all(new_label[label == 2] == 2)


def fixed_size(diameter: float, **changes) -> SyntheticTumorConfig:
    """One tumor of exactly `diameter` mm."""
    return SyntheticTumorConfig(
        count_range=(1, 1), size_classes_mm=((diameter, diameter),), size_class_weights=(1.0,), **changes
    )


def sphere_config(diameter: float) -> SyntheticTumorConfig:
    return fixed_size(diameter, axis_ratio_range=(1.0, 1.0), warp_strength=0.0, mass_effect_probability=0.0)


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (0.6, 0.9, 2.5)])
def test_sphere_has_requested_diameter_in_mm_for_anisotropic_spacing(spacing):
    ct, label = make_phantom(spacing=spacing, vessels=False, real_tumor=False)
    _, new_label, records = insert_tumors(ct, label, spacing, np.random.default_rng(0), sphere_config(20.0))
    assert records[0].diameter_mm == 20.0
    synthetic = new_tumor(label, new_label)
    for axis, step in enumerate(spacing_zyx(spacing)):
        others = tuple(a for a in range(3) if a != axis)
        extent_mm = np.count_nonzero(synthetic.any(axis=others)) * step
        assert abs(extent_mm - 20.0) <= step + 0.5, (axis, extent_mm)


@pytest.mark.parametrize("diameter", [10.0, 20.0, 30.0])
def test_warped_ellipsoid_has_requested_volume_equivalent_diameter(diameter):
    ct, label = make_phantom(vessels=False, real_tumor=False)
    for seed in range(3):
        _, new_label, _ = insert_tumors(ct, label, SPACING, np.random.default_rng(seed), fixed_size(diameter))
        volume = np.count_nonzero(new_tumor(label, new_label)) * np.prod(SPACING)
        measured = np.cbrt(6 * volume / np.pi)
        assert abs(measured - diameter) <= 0.1 * diameter, (seed, measured)


def test_changes_only_labelled_voxels_plus_documented_margin():
    ct, label = make_phantom()
    config = replace(
        SMALL_TUMORS,
        count_range=(3, 3),
        mass_effect_probability=1.0,
        size_classes_mm=((12.0, 25.0), (10.0, 16.0)),
    )
    new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(5), config)
    synthetic = new_tumor(label, new_label)
    to_synthetic = ndimage.distance_transform_edt(~synthetic, sampling=spacing_zyx())
    margin = synthetic | ((to_synthetic <= config.change_margin_mm) & (label == 1))
    changed = new_ct != ct
    assert not np.any(changed & ~margin)
    assert np.any(changed & ~synthetic), "the soft edge and mass effect should reach beyond the label"
    assert any(r.mass_effect_mm > 0 for r in records)


def test_same_seed_same_arrays_different_seed_different():
    ct, label = make_phantom(shape=(24, 96, 96), spacing=(0.9, 0.9, 3.0))
    ct_before, label_before = ct.copy(), label.copy()
    first = insert_tumors(ct, label, (0.9, 0.9, 3.0), np.random.default_rng(7), SMALL_TUMORS)
    again = insert_tumors(ct, label, (0.9, 0.9, 3.0), np.random.default_rng(7), SMALL_TUMORS)
    other = insert_tumors(ct, label, (0.9, 0.9, 3.0), np.random.default_rng(8), SMALL_TUMORS)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]
    assert not np.array_equal(first[0], other[0])
    assert np.array_equal(ct, ct_before) and np.array_equal(label, label_before), "inputs must stay untouched"


@pytest.mark.parametrize(("kind", "contrast"), [("hypodense", -50.0), ("hyperdense", 30.0)])
def test_tumor_differs_from_surrounding_liver_by_requested_contrast(kind, contrast):
    ct, label = make_phantom(vessels=False, real_tumor=False)
    weights = (1.0, 0, 0, 0, 0, 0, 0, 0) if kind == "hypodense" else (0, 1.0, 0, 0, 0, 0, 0, 0)
    config = replace(
        sphere_config(20.0),
        kind_weights=weights,
        hypodense_hu=(contrast, contrast),
        hyperdense_hu=(contrast, contrast),
    )
    new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(3), config)
    assert records[0].kind == kind and records[0].contrast_hu == contrast
    synthetic = new_tumor(label, new_label)
    inner = ndimage.distance_transform_edt(synthetic, sampling=spacing_zyx()) > 2.5
    outside = ndimage.distance_transform_edt(~synthetic, sampling=spacing_zyx())
    ring = (outside > config.change_margin_mm) & (outside < 15) & (label == 1)
    measured = new_ct[inner].mean() - np.median(new_ct[ring])
    assert abs(measured - contrast) < 5.0, measured


def test_slab_lets_tumors_cross_its_faces_where_a_volume_may_not():
    ct, label = make_phantom(vessels=False, real_tumor=False)
    slab = slice(18, 22)  # 4 slices of 2.5 mm: a 20 mm tumor centred anywhere in it fills all four
    config = sphere_config(20.0)
    with pytest.raises(UserInputError, match="liver too small"):
        insert_tumors(ct[slab], label[slab], SPACING, np.random.default_rng(0), config)
    _, new_label, records = insert_tumors_slab(
        ct[slab], label[slab], SPACING, np.random.default_rng(0), config
    )
    synthetic = new_tumor(label[slab], new_label)
    assert len(records) == 1 and np.all(synthetic.any(axis=(1, 2)))
    assert np.all(label[slab][synthetic] == 1)


def test_bad_inputs_give_clear_messages():
    ct, label = make_phantom(shape=(12, 64, 64), vessels=False, real_tumor=False)
    rng = np.random.default_rng(0)
    with pytest.raises(UserInputError, match="no liver voxels"):
        insert_tumors(ct, np.zeros_like(label), SPACING, rng)
    with pytest.raises(UserInputError, match=r"CT shape \(12, 64, 64\) and label shape \(12, 64, 63\)"):
        insert_tumors(ct, label[..., :63], SPACING, rng)
    tiny = np.zeros_like(label)
    tiny[5:7, 30:36, 30:36] = 1
    with pytest.raises(UserInputError, match=r"liver too small for a 3 mm tumor .* 4\.2 x 4\.2 x 5\.0 mm"):
        insert_tumors(ct, tiny, SPACING, rng)
    with pytest.raises(UserInputError, match="count range"):
        SyntheticTumorConfig(count_range=(0, 2))


def run_cli(argv: list[str], monkeypatch) -> int:
    return cli.main(argv)


def test_preview_writes_png_and_rejects_unwritable_output(tmp_path, monkeypatch, caplog):
    sitk = pytest.importorskip("SimpleITK")
    ct, label = make_phantom(shape=(24, 96, 96))
    for array, name in ((ct, "ct.nii.gz"), (label, "label.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        sitk.WriteImage(image, str(tmp_path / name))
    inputs = [str(tmp_path / "ct.nii.gz"), str(tmp_path / "label.nii.gz")]
    png = tmp_path / "preview.png"
    assert (
        run_cli(
            ["synth-preview", *inputs, "-o", str(png), "--seed", "1", "--count", "2", "--slices", "2"],
            monkeypatch,
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bulging = ["synth-preview", *inputs, "-o", str(png), "--bulging", "--count", "1", "--seed", "1"]
    with caplog.at_level(logging.INFO, logger="liver_e2net"):
        assert run_cli(bulging, monkeypatch) == 0
    assert "bulging out of the liver" in caplog.text
    unwritable = tmp_path / "missing" / "preview.png"
    assert run_cli(["synth-preview", *inputs, "-o", str(unwritable)], monkeypatch) == 2


def _one_kind(kind: str) -> SyntheticTumorConfig:
    from liver_e2net.training.synthetic_tumors import TUMOR_KINDS

    return replace(sphere_config(24.0), kind_weights=tuple(float(k == kind) for k in TUMOR_KINDS))


def _inside_and_edge(label, new_label):
    synthetic = new_tumor(label, new_label)
    depth = ndimage.distance_transform_edt(synthetic, sampling=spacing_zyx())
    return synthetic, depth


@pytest.mark.parametrize("kind", ["rim", "capsule", "isodense"])
def test_enhancing_rim_or_capsule_is_brighter_than_the_tumor_centre(kind):
    ct, label = make_phantom(vessels=False, real_tumor=False)
    config = replace(_one_kind(kind), rim_hu=(35.0, 35.0), hypodense_hu=(-40.0, -40.0), isodense_hu=(-10.0, -10.0))
    new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(1), config)
    assert records[0].kind == kind
    synthetic, depth = _inside_and_edge(label, new_label)
    rim, centre = new_ct[synthetic & (depth <= 1.0)].mean(), new_ct[depth > 6.0].mean()
    assert rim > centre + 15, (rim, centre)
    liver = np.median(ct[label == 1])
    expected_centre = -10.0 if kind == "isodense" else -40.0
    assert abs(centre - liver - expected_centre) < 8, centre - liver


def test_necrotic_centre_is_darker_than_its_viable_wall():
    ct, label = make_phantom(vessels=False, real_tumor=False)
    config = replace(_one_kind("necrotic"), hypodense_hu=(-25.0, -25.0), necrosis_hu=(-90.0, -90.0))
    new_ct, new_label, _ = insert_tumors(ct, label, SPACING, np.random.default_rng(2), config)
    _, depth = _inside_and_edge(label, new_label)
    liver = np.median(ct[label == 1])
    wall, centre = new_ct[(depth > 0) & (depth <= 2.0)].mean() - liver, new_ct[depth > 8.0].mean() - liver
    assert centre < -70 and -50 < wall < -10, (wall, centre)


def test_target_lesion_has_a_dark_core_in_a_faint_periphery_labelled_to_its_edge():
    ct, label = make_phantom(vessels=False, real_tumor=False)
    config = replace(_one_kind("target"), target_periphery_hu=(-10.0, -10.0), hypodense_hu=(-60.0, -60.0))
    new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(5), config)
    assert records[0].kind == "target"
    synthetic, depth = _inside_and_edge(label, new_label)
    liver = np.median(ct[label == 1])
    edge = new_ct[synthetic & (depth > 1.0) & (depth <= 2.0)].mean() - liver
    centre = new_ct[depth > 0.8 * depth.max()].mean() - liver
    assert centre < -45 and -20 < edge < 0, (edge, centre)
    assert (depth <= 2.0)[synthetic].sum() > 0.15 * synthetic.sum()  # the faint part is labelled tumor too


def test_graded_margin_fades_to_a_faint_edge_that_is_labelled_tumor():
    ct, label = make_phantom(vessels=False, real_tumor=False)
    sharp = replace(_one_kind("hypodense"), hypodense_hu=(-50.0, -50.0), graded_margin_probability=0.0)
    graded = replace(sharp, graded_margin_probability=1.0, margin_width_mm=(6.0, 6.0), margin_edge_fraction=(0.4, 0.4))
    liver = np.median(ct[label == 1])
    profiles = []
    for config in (sharp, graded):
        new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(4), config)
        synthetic, depth = _inside_and_edge(label, new_label)
        edge = new_ct[synthetic & (depth > 0.5) & (depth <= 2.0)].mean() - liver
        centre = new_ct[depth > 7.0].mean() - liver
        profiles.append((records[0].margin_mm, edge, centre))
    (sharp_margin, sharp_edge, sharp_centre), (graded_margin, graded_edge, graded_centre) = profiles
    assert sharp_margin == 0 and graded_margin == 6.0
    assert abs(graded_centre - sharp_centre) < 6 and sharp_centre < -40, profiles  # the core keeps its contrast
    assert graded_edge > sharp_edge + 12 and -35 < graded_edge < -10, profiles  # the outer part fades
    with pytest.raises(UserInputError, match="margin_edge_fraction"):
        replace(sharp, margin_edge_fraction=(0.6, 0.3))


def test_calcified_tumor_has_bright_specks_inside_only():
    ct, label = make_phantom(vessels=False, real_tumor=False)
    config = replace(_one_kind("calcified"), calcification_hu=(300.0, 300.0))
    new_ct, new_label, _ = insert_tumors(ct, label, SPACING, np.random.default_rng(4), config)
    synthetic, _ = _inside_and_edge(label, new_label)
    liver = np.median(ct[label == 1])
    bright = new_ct > liver + 100
    assert bright[synthetic].sum() >= 3  # specks inside the tumor
    assert not (bright & ~synthetic & (label == 1)).any()  # none outside it


def test_tumor_count_runs_from_one_to_the_cap_with_one_most_often():
    from liver_e2net.training.synthetic_tumors import _draw_count

    config = SyntheticTumorConfig()
    counts = [_draw_count(np.random.default_rng(seed), config) for seed in range(2000)]
    assert min(counts) == 1 and max(counts) <= 10 and max(counts) >= 5
    assert counts.count(1) > counts.count(2) > counts.count(3)
    assert max(c[1] for c in SyntheticTumorConfig().size_classes_mm) == 80.0
    with pytest.raises(UserInputError, match="kind_weights"):
        SyntheticTumorConfig(kind_weights=(1.0, 0.0, 0.0))


def test_border_tumors_may_bulge_out_of_the_liver_onto_soft_tissue_only():
    ct, label = make_phantom(vessels=False, real_tumor=False)
    ct[:, :, :8] = -1000  # air at one side: a bulge must never paint it
    config = replace(
        _one_kind("hypodense"), allow_border=True, exophytic_probability=1.0, hypodense_hu=(-40.0, -40.0)
    )
    new_ct, new_label, records = insert_tumors(ct, label, SPACING, np.random.default_rng(6), config)
    assert records[0].exophytic and records[0].mass_effect_mm == 0
    synthetic = new_tumor(label, new_label)
    outside = synthetic & (label == 0)
    assert outside.any() and 1 - outside.sum() / synthetic.sum() >= config.exophytic_min_inside
    liver = np.median(ct[label == 1])
    deep = ndimage.distance_transform_edt(outside, sampling=spacing_zyx()) > 1.5
    assert abs(new_ct[deep].mean() - (liver - 40)) < 10  # the bulge looks like the tumor, not like fat
    assert (new_ct[ct == -1000] == -1000).all()
    inside_only = replace(config, allow_border=False)  # no border, no bulge: the default of every tumor
    _, inside_label, inside_records = insert_tumors(ct, label, SPACING, np.random.default_rng(6), inside_only)
    assert not inside_records[0].exophytic and not (new_tumor(label, inside_label) & (label == 0)).any()


def test_organ_bulges_are_centred_where_the_liver_meets_tissue_of_its_own_density():
    ct, label = make_phantom(shape=(40, 192, 192), vessels=False, real_tumor=False)  # room for bulges all round
    z, y, x = np.indices(label.shape)
    edge = 96 + 40 / SPACING[0]  # the liver's right edge
    organ = (label == 0) & (np.abs(y - 96) <= 12) & (x >= edge - 2) & (x < edge + 12)
    ct[organ] = 90  # a duodenum-like block of the liver's density on one side; fat elsewhere
    near_organ = ndimage.binary_dilation(organ, np.ones((1, 5, 5), bool))
    bulging = replace(_one_kind("hypodense"), allow_border=True, exophytic_probability=1.0, count_range=(1, 1))
    beside = []
    for share in (1.0, 0.0):
        config = replace(bulging, organ_bulge_share=share)
        records = [insert_tumors(ct, label, SPACING, np.random.default_rng(s), config)[2][0] for s in range(6)]
        assert all(r.exophytic for r in records)
        beside.append(sum(bool(near_organ[r.centre]) for r in records))
    assert beside[0] == 6 and beside[1] <= 2, beside  # the block borders a small share of the outline
    with pytest.raises(UserInputError, match="organ_bulge_share"):
        replace(bulging, organ_bulge_share=1.5)
