"""The two-stage pipeline end to end on real CT with small random (biased) networks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from core_helpers import SAMPLE_CT, biased_checkpoint, shared_case
from liver_e2net.errors import UserInputError
from liver_e2net.io import read_ct
from liver_e2net.pipeline import Segmenter, TestTimeAugmentation
from liver_e2net.postprocessing import (
    TUMOR_EXTENT,
    TUMOR_SEED,
    compose_label,
    dilate_faces,
    fill_holes_per_slice,
    grow_liver,
    tumor_mask,
)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(biased_checkpoint(liver_bias=0.5, tumor_bias=0.3), device="cpu")


@pytest.fixture(scope="module")
def sample_ct() -> sitk.Image:
    return read_ct(SAMPLE_CT)[:, :, 20:36]  # 16 slices through the liver keep the test fast


def test_label_map_on_input_grid(segmenter: Segmenter, sample_ct: sitk.Image) -> None:
    result = segmenter.segment(sample_ct, probabilities=True)
    assert result.label.shape == sitk.GetArrayViewFromImage(sample_ct).shape
    assert result.label.dtype == np.uint8
    assert set(np.unique(result.label)) <= {0, 1, 2}
    assert (result.label >= 1).any()
    assert result.probabilities.shape == (2, *result.label.shape)
    assert 0.0 <= result.probabilities.min() and result.probabilities.max() <= 1.0
    assert set(result.seconds) == {"stage1", "stage2", "postprocess", "total"}


@pytest.mark.parametrize(
    "axes,flips",
    [((0, 1, 2), (True, False, False)), ((1, 0, 2), (False, True, False)), ((2, 0, 1), (False, False, True))],
)
def test_reoriented_input_gives_the_same_answer(segmenter, sample_ct, axes, flips) -> None:
    """The same CT stored flipped / permuted on disk must give the same segmentation, mapped back."""
    reference = segmenter.segment(sample_ct).label
    moved = sitk.Flip(sitk.PermuteAxes(sample_ct, axes), flips)
    result = segmenter.segment(moved).label
    back = sitk.GetArrayFromImage(
        sitk.Resample(_with_array(moved, result), sample_ct, sitk.Transform(), sitk.sitkNearestNeighbor)
    )
    assert result.shape == sitk.GetArrayViewFromImage(moved).shape
    assert np.array_equal(back, reference)


def _with_array(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def test_real_ircad_ct_tumors_inside_liver(segmenter: Segmenter) -> None:
    ct = read_ct(shared_case("case01_ct.nii.gz"))
    label = segmenter.segment(ct[:, :, 50:62]).label
    assert label.shape == (12, 512, 512)
    assert set(np.unique(label)) <= {0, 1, 2}
    tumor = label == 2
    assert tumor.any()
    assert (label[tumor] >= 1).all()


def test_ct_without_liver_returns_empty_label_and_says_so(sample_ct: sitk.Image) -> None:
    segmenter = Segmenter(biased_checkpoint(liver_bias=-20.0), device="cpu")
    result = segmenter.segment(sample_ct)
    assert not result.label.any()
    assert any("no liver" in warning for warning in result.warnings)


def test_compose_label_keeps_largest_liver_fills_holes_and_bounds_tumor() -> None:
    liver = np.zeros((5, 20, 20), bool)
    liver[1:4, 2:12, 2:12] = True
    liver[2, 6, 6] = False  # a hole
    liver[1:3, 16:18, 16:18] = True  # a stray island
    tumor = np.zeros_like(liver)
    tumor[2, 4:6, 4:6] = True  # inside
    tumor[0, 0, 0] = True  # outside the liver: must go
    label = compose_label(liver, tumor, voxel_ml=0.001)
    assert label[2, 6, 6] == 1
    assert not label[1:3, 16:18, 16:18].any()
    assert (label == 2).sum() == 4 and label[0, 0, 0] == 0


def test_axial_hole_filling_equals_scipy_per_slice() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for _ in range(3):  # blobby masks with holes, open and closed at the slice edges
        mask = ndimage.gaussian_filter(rng.random((6, 50, 40)), (0, 2, 2)) > 0.5
        expected = np.stack([ndimage.binary_fill_holes(axial) for axial in mask])
        assert (expected != mask).any()  # there were holes to fill
        np.testing.assert_array_equal(fill_holes_per_slice(mask), expected)


def test_tumor_hysteresis_equals_skimages() -> None:
    from scipy import ndimage
    from skimage.filters import apply_hysteresis_threshold

    rng = np.random.default_rng(0)
    for _ in range(3):
        probability = ndimage.gaussian_filter(rng.random((20, 60, 60)).astype(np.float32), 2)
        probability = (probability - probability.min()) / np.ptp(probability)
        expected = apply_hysteresis_threshold(probability, TUMOR_EXTENT, TUMOR_SEED)
        assert expected.any() and not expected.all()
        np.testing.assert_array_equal(tumor_mask(probability), expected)
    assert not tumor_mask(np.zeros((2, 3, 3), np.float32)).any()


def test_a_tumor_grows_from_its_seed_over_its_halo_and_a_halo_alone_is_no_tumor() -> None:
    probability = np.zeros((3, 20, 20), np.float32)
    halo = (TUMOR_EXTENT + TUMOR_SEED) / 2
    probability[:, 2:9, 2:9] = halo
    probability[1, 4:7, 4:7] = TUMOR_SEED + 0.1  # the seed: the core the network is sure of
    probability[:, 12:18, 12:18] = halo  # a halo without a seed
    probability[1, 10, 2] = TUMOR_EXTENT - 0.05  # below the extent threshold, beside the halo
    mask = tumor_mask(probability)
    assert mask[:, 2:9, 2:9].all() and mask.sum() == 3 * 7 * 7
    assert not mask[:, 12:18, 12:18].any() and not mask[1, 10, 2]


def test_the_liver_grows_into_liver_like_neighbours_only_and_tumors_stay() -> None:
    hu = np.full((9, 30, 30), -80, np.int16)  # fat around the organ
    label = np.zeros(hu.shape, np.uint8)
    label[2:7, 5:15, 5:15] = 1
    hu[2:7, 5:15, 5:15] = np.linspace(40, 139, 500).reshape(5, 10, 10)  # liver: 40-139 HU
    label[4, 8:10, 8:10] = 2
    hu[4, 8:10, 8:10] = 20  # a tumor darker than the liver
    hu[2:7, 15:25, 5:15] = 90  # liver-like tissue beside the drawn edge, 10 voxels wide
    hu[2:7, 5:15, 0:5] = 300  # bright tissue (contrast, bone) on the other side
    hu[7:9, 5:15, 5:15] = 90  # liver-like tissue above the drawn liver: never grown into (heart above the dome)
    grown = grow_liver(label, hu, (1.0, 1.0), reach_mm=2.5)  # 2 steps along y and x
    added = (grown == 1) & (label == 0)
    assert added[2:7, 15:25, 5:15].sum() == 5 * 10 * 2  # one voxel layer per step, no further
    assert added.sum() == 5 * 10 * 2  # not into fat, the bright side or the slices above
    assert ((grown == 2) == (label == 2)).all()
    np.testing.assert_array_equal(grow_liver(label, hu, (3.0, 3.0), reach_mm=2.5), label)  # pixels past the reach
    assert not grow_liver(np.zeros_like(label), hu, (1.0, 1.0)).any()  # no liver: nothing to grow


def test_the_bundled_model_grows_its_liver_in_plane_and_the_filter_view_does_not(sample_ct: sitk.Image) -> None:
    segmenter = Segmenter(device="cpu", threads=1)
    grown = segmenter.segment(sample_ct).label
    drawn = segmenter.segment(sample_ct, grow=False).label  # as the FP filter and its training candidates see it
    added = (grown == 1) & (drawn == 0)
    assert added.any() and ((grown >= 1) | ~(drawn >= 1)).all()  # grows, never shrinks
    np.testing.assert_array_equal(grown == 2, drawn == 2)
    has_liver = (drawn >= 1).any(axis=(1, 2))
    assert not added[~has_liver].any()  # never onto a slice without liver


def test_face_dilation_equals_scipys() -> None:
    from scipy import ndimage

    mask = np.random.default_rng(2).random((7, 11, 13)) < 0.05
    cross = ndimage.generate_binary_structure(3, 1)
    np.testing.assert_array_equal(dilate_faces(mask), ndimage.binary_dilation(mask, cross))


def test_test_time_fusion_stays_a_probability_and_changes_the_answer(sample_ct: sitk.Image) -> None:
    checkpoint = biased_checkpoint(liver_bias=0.5, tumor_bias=0.3)
    plain = Segmenter(checkpoint, device="cpu").segment(sample_ct, probabilities=True).probabilities
    fused = (
        Segmenter(checkpoint, device="cpu", tta=TestTimeAugmentation.from_mode("flip+multiscale"))
        .segment(sample_ct, probabilities=True)
        .probabilities
    )
    assert fused.shape == plain.shape
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    assert not np.allclose(fused, plain)


def test_a_model_carrying_one_tta_scale_makes_best_equal_fast_and_says_so(sample_ct: sitk.Image) -> None:
    """Best runs the model's own scales: one that carries (1,) answers as Fast, with a warning; given scales win."""
    import dataclasses

    checkpoint = biased_checkpoint(liver_bias=0.5, tumor_bias=0.3)
    prep = dataclasses.replace(checkpoint.config.preprocessing, tta_scales=(1.0,))
    checkpoint.config = dataclasses.replace(checkpoint.config, preprocessing=prep)
    fast = Segmenter(checkpoint, device="cpu").segment(sample_ct, probabilities=True)
    best_segmenter = Segmenter(checkpoint, device="cpu", tta=TestTimeAugmentation.from_mode("multiscale"))
    best = best_segmenter.segment(sample_ct, probabilities=True)
    assert best_segmenter.tta.scales == (1.0,)
    assert np.array_equal(best.probabilities, fast.probabilities) and np.array_equal(best.label, fast.label)
    assert any("Best equals Fast" in w for w in best.warnings) and not fast.warnings
    forced = Segmenter(checkpoint, device="cpu", tta=TestTimeAugmentation.from_mode("multiscale", (0.875, 1.0)))
    assert forced.tta.scales == (0.875, 1.0) and not forced.tta_warnings
    assert "Best = Fast" in checkpoint.describe()
    default = biased_checkpoint()
    assert Segmenter(default, device="cpu", tta=TestTimeAugmentation.from_mode("multiscale")).tta.scales == (0.875, 1.0)


def test_tta_scales_below_the_network_stride_are_refused() -> None:
    with pytest.raises(UserInputError, match="smaller than the network stride"):
        Segmenter(
            biased_checkpoint(), device="cpu", tta=TestTimeAugmentation.from_mode("multiscale", (0.05, 1.0))
        )
    with pytest.raises(UserInputError, match="unknown --tta"):
        TestTimeAugmentation.from_mode("mirror")


def test_a_tumor_brighter_than_any_liver_tumor_becomes_liver_and_others_stay() -> None:
    """Contrast-filled vessels and renal cortex (median > 170 HU) are not tumors; a hyperdense HCC (130 HU) is."""
    from liver_e2net.postprocessing import demote_bright_tumors

    label = np.ones((6, 20, 20), np.uint8)
    hu = np.full(label.shape, 100.0, np.float32)
    label[1:3, 2:5, 2:5], hu[1:3, 2:5, 2:5] = 2, 230.0  # "tumor" on the kidney
    label[3:5, 10:14, 10:14], hu[3:5, 10:14, 10:14] = 2, 130.0  # arterial-phase HCC
    label[2, 15:18, 15:18], hu[2, 15:18, 15:18] = 2, 40.0  # hypodense metastasis
    hu[2, 3, 3] = 900.0  # one bright voxel does not make the median
    out = demote_bright_tumors(label, hu)
    assert (out[1:3, 2:5, 2:5] == 1).all()
    assert (out[3:5, 10:14, 10:14] == 2).all() and (out[2, 15:18, 15:18] == 2).all()
    assert (label[1:3, 2:5, 2:5] == 2).all()  # the input is left as it was


def test_flip_tta_warns_for_a_model_trained_without_flips() -> None:
    """Flip fusion averages in a guess on mirrored anatomy; only a model trained with flips has seen that."""
    from liver_e2net.checkpoint import random_checkpoint
    from liver_e2net.config import lite_config
    from liver_e2net.pipeline import flip_warning

    checkpoint = random_checkpoint(lite_config())
    assert "not trained with left-right flips" in flip_warning(checkpoint)
    checkpoint.metadata["train_config"] = {"augment": {"flip_lr": True}}
    assert flip_warning(checkpoint) is None


@pytest.mark.parametrize("connectivity, density", [(6, 0.3), (26, 0.08)])
def test_component_labels_are_scipys_in_raster_order(connectivity: int, density: float) -> None:
    """cc3d replaced scipy.ndimage.label for speed: the same labels and numbering, within any bounding box."""
    from liver_e2net.postprocessing import label_components
    from scipy import ndimage

    mask = np.zeros((30, 40, 50), bool)
    mask[3:27, 5:35, 6:44] = np.random.default_rng(connectivity).random((24, 30, 38)) < density
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    expected, count = ndimage.label(mask, structure=structure)
    labels, n = label_components(mask, connectivity)
    assert n == count > 100 and labels.dtype == np.int32 and np.array_equal(labels, expected)
    assert label_components(np.zeros((4, 4, 4), bool))[1] == 0


def test_largest_component_and_small_component_removal_equal_scipys() -> None:
    """cc3d's largest_k and dust replaced labelling + counting: the same masks as scipy's 26-connected labels."""
    from liver_e2net.postprocessing import largest_component, remove_small_components
    from scipy import ndimage

    mask = np.zeros((30, 40, 50), bool)
    mask[2:28, 3:37, 4:46] = np.random.default_rng(7).random((26, 34, 42)) < 0.12
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    assert count > 50 and len(set(sizes[1:])) > 5
    np.testing.assert_array_equal(largest_component(mask), labels == sizes.argmax())
    for min_voxels in (2, 4, int(sizes.max())):
        np.testing.assert_array_equal(remove_small_components(mask, min_voxels), sizes[labels] >= min_voxels)
    empty = np.zeros((3, 4, 5), bool)
    assert not largest_component(empty).any() and not remove_small_components(empty, 3).any()
    one = np.zeros((3, 4, 5), bool)
    one[1, 1:3, 1:3] = True
    np.testing.assert_array_equal(largest_component(one), one)
    np.testing.assert_array_equal(remove_small_components(one, 1), one)
