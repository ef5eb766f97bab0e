"""Copies of real tumors (train --real-tumor-paste): what is copied, how it is painted, and what is refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import test_synthetic_tumors as phantoms
from liver_e2net.cli import main
from liver_e2net.config import lite_config
from liver_e2net.errors import UserInputError
from liver_e2net.training import TrainConfig, TrainingCase
from liver_e2net.training.cache import prepare_cases
from liver_e2net.training.real_tumors import donors_from_case, transformed_donor
from liver_e2net.training.samples import Stage2Samples
from liver_e2net.training.synthetic_tumors import insert_tumors
from scipy import ndimage

SPACING = (0.8, 0.8, 2.0)  # (x, y, z) mm
CORE_HU, EDGE_HU = -60.0, -20.0  # the donor's centre and periphery, relative to its liver


def donor_case(radius_mm=10.0, core_mm=5.0, liver_hu=100.0, spacing=SPACING, shape=(30, 96, 96), seed=0):
    """A liver with one real tumor: a dark core inside a faint periphery, as many metastases look."""
    rng = np.random.default_rng(seed)
    z, y, x = (
        (np.arange(n) - n // 2).reshape([-1 if a == axis else 1 for a in range(3)]) * s
        for axis, (n, s) in enumerate(zip(shape, spacing[::-1], strict=True))
    )
    label = np.zeros(shape, np.uint8)
    label[(x / 35) ** 2 + (y / 35) ** 2 + (z / 28) ** 2 <= 1] = 1
    radius = np.sqrt(x**2 + y**2 + z**2)
    label[radius <= radius_mm] = 2
    ct = np.where(label >= 1, liver_hu, -100.0)
    ct = ct + np.where(radius <= core_mm, CORE_HU, np.where(radius <= radius_mm, EDGE_HU, 0.0))
    return (ct + rng.normal(0, 8, shape)).astype(np.int16), label


def copying(**changes):
    return phantoms.fixed_size(
        24.0, real_tumor_probability=1.0, real_contrast_scale=(1.0, 1.0), mass_effect_probability=0.0, **changes
    )


def test_a_real_tumor_is_copied_with_its_size_and_its_contrast_to_its_own_liver():
    ct, label = donor_case()
    (donor,) = donors_from_case(ct, label, SPACING, "donor")
    assert donor.source == "donor"
    assert abs(donor.diameter_mm - 20.0) < 1.5, donor.diameter_mm
    depth = ndimage.distance_transform_edt(donor.mask, sampling=donor.spacing_zyx)
    assert abs(np.median(donor.contrast_hu[depth > 7.0]) - CORE_HU) < 8
    assert abs(np.median(donor.contrast_hu[donor.mask & (depth > 1.5) & (depth <= 3.0)]) - EDGE_HU) < 8
    # A tumor under the size floor, and one with no liver around it, have nothing worth copying.
    assert donors_from_case(*donor_case(radius_mm=5.0, core_mm=2.0), SPACING, "small") == []
    no_liver = np.where(label == 1, 0, label).astype(np.uint8)
    assert donors_from_case(ct, no_liver, SPACING, "alone") == []


@pytest.mark.parametrize("diameter", [8.0, 20.0, 40.0])
def test_a_copy_takes_the_drawn_size_on_another_grid(diameter):
    (donor,) = donors_from_case(*donor_case(), SPACING, "donor")
    for seed in range(3):
        mask, contrast, origin = transformed_donor(donor, diameter, np.array([2.5, 0.7, 0.7]), np.random.default_rng(seed))
        volume = mask.sum() * 2.5 * 0.7 * 0.7
        assert abs(np.cbrt(6 * volume / np.pi) - diameter) <= 0.12 * diameter
        assert mask[tuple(origin)]  # centred in its box
        assert contrast[mask].min() >= CORE_HU - 25 and contrast[mask].max() <= 10


def test_painted_copies_keep_the_donors_dark_core_and_faint_edge_on_another_liver():
    donors = tuple(donors_from_case(*donor_case(), SPACING, "donor"))
    ct, label = phantoms.make_phantom(vessels=False, real_tumor=False)  # liver at 100 HU, 0.7 x 0.7 x 2.5 mm
    host = np.where(label == 1, ct - 40, ct).astype(np.int16)  # a darker liver: contrast is relative to it
    config = copying()
    new_ct, new_label, records = insert_tumors(host, label, phantoms.SPACING, np.random.default_rng(3), config, donors)
    assert [r.kind for r in records] == ["real"]
    phantoms.assert_placement_rules(host, label, new_label, records, phantoms.SPACING, config)
    tumor = phantoms.new_tumor(label, new_label)
    depth = ndimage.distance_transform_edt(tumor, sampling=phantoms.spacing_zyx())
    liver = np.median(host[label == 1])
    centre = np.median(new_ct[depth > 0.8 * depth.max()]) - liver
    edge = np.median(new_ct[tumor & (depth <= 2.0)]) - liver
    assert abs(centre - CORE_HU) < 15 and -40 < edge < -5, (centre, edge)
    assert abs(np.cbrt(6 * tumor.sum() * np.prod(phantoms.SPACING) / np.pi) - 24.0) < 3.0


def test_without_donors_or_at_share_zero_the_painted_tumors_are_unchanged():
    donors = tuple(donors_from_case(*donor_case(), SPACING, "donor"))
    ct, label = phantoms.make_phantom()
    config = phantoms.SMALL_TUMORS
    plain = insert_tumors(ct, label, phantoms.SPACING, np.random.default_rng(4), config)
    share_zero = insert_tumors(ct, label, phantoms.SPACING, np.random.default_rng(4), config, donors)
    no_donors = insert_tumors(ct, label, phantoms.SPACING, np.random.default_rng(4), replace(config, real_tumor_probability=1.0))
    for other in (share_zero, no_donors):
        assert np.array_equal(plain[0], other[0]) and np.array_equal(plain[1], other[1]) and plain[2] == other[2]
    copied = insert_tumors(ct, label, phantoms.SPACING, np.random.default_rng(4), replace(config, real_tumor_probability=1.0), donors)
    assert {r.kind for r in copied[2]} == {"real"}


def _training_case(name, with_tumor, seed=0):
    ct, label = donor_case(seed=seed)
    if not with_tumor:
        ct, label = np.where(label == 2, ct - np.int16(CORE_HU), ct).astype(np.int16), np.minimum(label, 1)
    ct = np.where(label == 0, np.int16(-1000), ct)  # air around the "body", as CT has
    return TrainingCase(name, ct, label, SPACING)


def test_stage2_samples_copy_the_training_cases_real_tumors_into_other_livers(tmp_path):
    cases = prepare_cases([_training_case("with", True), _training_case("without", False, 1)], tmp_path)
    config = TrainConfig(synthetic_tumors=1.0, real_tumor_paste=1.0)
    samples = Stage2Samples(cases, lite_config(), config)
    assert [d.source for d in samples.donors] == ["with"]
    without = cases[1]
    rows, columns = slice(0, without.shape[1]), slice(0, without.shape[2])
    painted = [samples._synthetic(without, 15, rows, columns, samples.rng(i))[1] for i in range(4)]
    assert any((label == 2).any() for label in painted)
    assert Stage2Samples(cases, lite_config(), TrainConfig(synthetic_tumors=1.0)).donors == ()


def test_real_tumor_paste_without_a_real_tumor_or_out_of_range_is_refused(tmp_path, capsys):
    cases = prepare_cases([_training_case("a", False), _training_case("b", False, 1)], tmp_path / "cache")
    with pytest.raises(UserInputError, match=r"--real-tumor-paste: none of the training cases \(a, b\) has a real tumor"):
        Stage2Samples(cases, lite_config(), TrainConfig(synthetic_tumors=0.7, real_tumor_paste=0.3))
    with pytest.raises(UserInputError, match="--real-tumor-paste 1.5: a share in"):
        TrainConfig(real_tumor_paste=1.5)
    ct = tmp_path / "ct.nii.gz"
    assert main(["train", "--case", str(ct), str(ct), "-o", str(tmp_path / "run"), "--real-tumor-paste", "-0.1"]) == 2
    assert "--real-tumor-paste -0.1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_synth_preview_shows_copies_of_a_cases_real_tumors_and_refuses_a_case_without_one(tmp_path, caplog, capsys):
    import logging

    import SimpleITK as sitk

    def write(array, name, spacing):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(tmp_path / name))
        return str(tmp_path / name)

    host_ct, host_label = phantoms.make_phantom(shape=(24, 96, 96), real_tumor=False)
    host = [write(host_ct, "ct.nii.gz", phantoms.SPACING), write(host_label, "label.nii.gz", phantoms.SPACING)]
    donor_ct, donor_label = donor_case()
    donor = [write(donor_ct, "d_ct.nii.gz", SPACING), write(donor_label, "d_label.nii.gz", SPACING)]
    png = tmp_path / "real.png"
    with caplog.at_level(logging.INFO, logger="liver_e2net"):
        assert main(["synth-preview", *host, "--real-from", *donor, "--count", "2", "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert caplog.text.count(", real, ") == 2
    empty = tmp_path / "none.png"
    assert main(["synth-preview", *host, "--real-from", *host, "-o", str(empty)]) == 2
    assert "label.nii.gz has no tumor (label 2) of 1 ml or more" in capsys.readouterr().err
    assert not empty.exists()
