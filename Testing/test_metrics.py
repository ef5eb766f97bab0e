"""Metrics against hand-computed values on small synthetic volumes (arrays [z, y, x], spacing (x, y, z))."""

from __future__ import annotations

import math

import numpy as np
import pytest
from liver_e2net import metrics
from scipy import ndimage
from scipy.spatial.distance import cdist

SHAPE = (6, 8, 30)


def boxes(*slices: tuple[slice, slice, slice], shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for box in slices:
        mask[box] = True
    return mask


def cube(x0: int, size: int = 4, z0: int = 1, y0: int = 1) -> tuple[slice, slice, slice]:
    return np.s_[z0 : z0 + size, y0 : y0 + size, x0 : x0 + size]


def test_overlap_scores_by_hand():
    pred = boxes(np.s_[0, 0, 0:4])  # 4 voxels
    ref = boxes(np.s_[0, 0, 1:7])  # 6 voxels, 3 shared
    assert metrics.dice(pred, ref) == pytest.approx(2 * 3 / 10)
    assert metrics.voe(pred, ref) == pytest.approx(1 - 3 / 7)
    assert metrics.rvd(pred, ref) == pytest.approx((4 - 6) / 6)


def test_empty_mask_policy():
    empty, some = boxes(), boxes(np.s_[1:3, 1:3, 1:3])
    spacing = (1.0, 1.0, 1.0)
    both = metrics.segmentation_scores(empty, empty, spacing)
    assert (both.dice, both.voe, both.rvd) == (1.0, 0.0, 0.0)
    assert math.isnan(both.assd_mm) and math.isnan(both.msd_mm)
    no_pred = metrics.segmentation_scores(empty, some, spacing)
    assert (no_pred.dice, no_pred.voe, no_pred.rvd) == (0.0, 1.0, -1.0)
    assert math.isnan(no_pred.assd_mm) and math.isnan(no_pred.msd_mm)
    no_ref = metrics.segmentation_scores(some, empty, spacing)
    assert (no_ref.dice, no_ref.voe) == (0.0, 1.0)
    assert (
        math.isnan(no_ref.rvd)
        and math.isnan(no_ref.assd_mm)
        and math.isnan(metrics.msd(some, empty, spacing))
    )


def test_identical_masks_have_zero_distance():
    mask = boxes(np.s_[1:5, 2:6, 3:20])
    assert metrics.assd(mask, mask, (0.7, 0.7, 2.5)) == 0.0
    assert metrics.msd(mask, mask, (0.7, 0.7, 2.5)) == 0.0


@pytest.mark.parametrize(
    ("far_voxel", "distance_mm"),
    [((0, 0, 4), 4 * 0.5), ((0, 3, 0), 3 * 0.8), ((4, 0, 0), 4 * 3.0)],  # along x, y, z
)
def test_distances_use_spacing_x_y_z_on_z_y_x_arrays(far_voxel, distance_mm):
    """Single voxels are their own surface: pred = {origin, far voxel}, ref = {origin}."""
    ref = boxes(np.s_[0, 0, 0])
    pred = ref.copy()
    pred[far_voxel] = True
    spacing = (0.5, 0.8, 3.0)  # (x, y, z) mm
    assert metrics.surface_distances(pred, ref, spacing)[0].tolist() == pytest.approx([0.0, distance_mm])
    assert metrics.assd(pred, ref, spacing) == pytest.approx(
        distance_mm / 3
    )  # (0 + d + 0) / 3 surface voxels
    assert metrics.msd(pred, ref, spacing) == pytest.approx(distance_mm)


def brute_force_distances(pred, ref, spacing):
    """Independent check: all-pairs distances between explicit boundary point sets in mm."""

    def points(mask):
        surface = mask & ~ndimage.binary_erosion(mask)
        return np.argwhere(surface) * np.array(spacing)[::-1]

    pairwise = cdist(points(pred), points(ref))
    return pairwise.min(axis=1), pairwise.min(axis=0)


def test_surface_distances_match_brute_force_on_anisotropic_blobs():
    rng = np.random.default_rng(0)
    spacing = (0.6, 0.9, 2.5)
    ref = ndimage.binary_opening(rng.random((8, 14, 16)) > 0.35, iterations=1)
    pred = ndimage.binary_dilation(ref) ^ (rng.random(ref.shape) > 0.9)
    pred[0, :, :] = True  # touches the array border: the bounding-box crop must not change distances
    to_ref, to_pred = metrics.surface_distances(pred, ref, spacing)
    expected_to_ref, expected_to_pred = brute_force_distances(pred, ref, spacing)
    assert np.sort(to_ref) == pytest.approx(np.sort(expected_to_ref))
    assert np.sort(to_pred) == pytest.approx(np.sort(expected_to_pred))
    pooled = np.concatenate([expected_to_ref, expected_to_pred])
    assert metrics.assd(pred, ref, spacing) == pytest.approx(pooled.mean())
    assert metrics.msd(pred, ref, spacing) == pytest.approx(pooled.max())


def test_global_dice_sums_over_cases_unlike_the_mean():
    accumulator = metrics.DiceAccumulator()
    perfect = (boxes(np.s_[0, 0, 0:2]), boxes(np.s_[0, 0, 0:2]))  # Dice 1, tp 2
    missed = (boxes(), boxes(np.s_[0, 0:2, 0:4]))  # Dice 0, fn 8
    for pred, ref in (perfect, missed):
        accumulator.add(pred, ref)
    assert (accumulator.tp, accumulator.fp, accumulator.fn) == (2, 0, 8)
    assert accumulator.dice == pytest.approx(4 / 12)
    assert np.mean([metrics.dice(*perfect), metrics.dice(*missed)]) == 0.5
    assert metrics.DiceAccumulator().dice == 1.0


def test_tumor_burden_and_rmse():
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[0, 0, 0:10] = 1
    label[0, 0, 0:2] = 2  # tumor is part of the liver: 2 / 10
    assert metrics.tumor_burden(label) == pytest.approx(0.2)
    assert metrics.tumor_burden(np.zeros(SHAPE, dtype=np.uint8)) == 0.0
    assert metrics.burden_rmse([0.2, 0.0], [0.1, 0.3]) == pytest.approx(math.sqrt((0.01 + 0.09) / 2))
    assert math.isnan(metrics.burden_rmse([], []))


def test_components_use_26_connectivity():
    mask = boxes(np.s_[0, 0, 0], np.s_[1, 1, 1], np.s_[4, 4, 4])  # corner-touching pair + isolated voxel
    labels, count = metrics.label_components(mask)
    assert count == 2 and labels[0, 0, 0] == labels[1, 1, 1] != labels[4, 4, 4]


def test_lits_detection_iou_above_half():
    ref = boxes(cube(0), cube(10))
    partial = np.s_[1:5, 1:5, 10:12]  # half of the second cube: IoU 0.5, not > 0.5
    pred = boxes(cube(0), partial, cube(20))  # exact, partial, false positive
    detection = metrics.lits_detection(pred, ref)
    assert (detection.n_ref, detection.n_pred, detection.detected) == (2, 3, 1)
    assert detection.recall == 0.5 and detection.precision == pytest.approx(1 / 3)
    empty = metrics.lits_detection(boxes(), boxes())
    assert math.isnan(empty.recall) and math.isnan(empty.precision)


ISO = (1.0, 1.0, 1.0)


def test_chlebus_one_to_one_hit():
    ref, pred = boxes(cube(2)), boxes(cube(3))  # shifted by one voxel: 48 of 64 shared
    result = metrics.chlebus_detection(pred, ref, ISO)
    assert result.correspondences == (metrics.Correspondence((1,), (1,), 0.75, True),)
    assert (result.tp, result.fp, result.recall) == (1, 0, 1.0)
    assert result.dice_per_correspondence == (0.75,)
    assert (result.merge_errors, result.split_errors) == (0, 0)


def test_chlebus_miss_and_false_positive():
    ref, pred = boxes(cube(0)), boxes(cube(10))
    result = metrics.chlebus_detection(pred, ref, ISO)
    assert set(result.correspondences) == {
        metrics.Correspondence((), (1,), 0.0, False),
        metrics.Correspondence((1,), (), 0.0, False),
    }
    assert (result.n_ref, result.n_pred, result.tp, result.fp, result.recall) == (1, 1, 0, 1, 0.0)
    assert result.dice_per_correspondence == ()
    no_reference = metrics.chlebus_detection(pred, boxes(), ISO)
    assert no_reference.fp == 1 and math.isnan(no_reference.recall)


def test_chlebus_merge_one_output_on_two_references():
    ref = boxes(cube(0), cube(5))  # x 0-3 and 5-8, gap at x = 4
    pred = boxes(np.s_[1:5, 1:5, 0:9])  # covers both and the gap: 144 voxels, 128 shared
    result = metrics.chlebus_detection(pred, ref, ISO)
    assert result.correspondences == (metrics.Correspondence((1,), (1, 2), 2 * 128 / (144 + 128), True),)
    assert (result.tp, result.fp, result.recall) == (2, 0, 1.0)
    assert (result.merge_errors, result.split_errors) == (1, 0)


def test_chlebus_split_two_outputs_on_one_reference():
    ref = boxes(np.s_[1:5, 1:5, 0:9])
    pred = boxes(cube(0), cube(5))
    result = metrics.chlebus_detection(pred, ref, ISO)
    assert result.correspondences == (metrics.Correspondence((1, 2), (1,), 2 * 128 / (144 + 128), True),)
    assert (result.tp, result.fp, result.recall) == (1, 0, 1.0)  # a split reference is one TP, no FP
    assert (result.merge_errors, result.split_errors) == (0, 1)


def test_chlebus_overlap_at_threshold_is_no_hit():
    ref, pred = boxes(cube(0, size=5)), boxes(cube(4, size=5))  # 25 of 125 shared: Dice exactly 0.2
    result = metrics.chlebus_detection(pred, ref, ISO)
    assert result.correspondences == (metrics.Correspondence((1,), (1,), pytest.approx(0.2), False),)
    assert (result.tp, result.fp, result.recall) == (0, 1, 0.0)
    assert metrics.chlebus_detection(pred, ref, ISO, theta=0.19).tp == 1


def test_chlebus_output_corresponds_to_the_smaller_reference_only():
    """Fig. 2c: the output covers a small reference and grazes a large one; taking both lowers the Dice."""
    large, small = np.s_[0:6, 0:6, 0:6], np.s_[0:2, 0:2, 8:10]
    ref = boxes(large, small)
    pred = boxes(np.s_[0:2, 0:2, 5:10])  # 4 voxels in the large one, all 8 of the small one
    spacing = (2.0, 1.0, 1.0)  # large: 12 x 6 mm in-plane (>= 10 mm); small: at most 4.5 mm
    result = metrics.chlebus_detection(pred, ref, spacing)
    assert set(result.correspondences) == {
        metrics.Correspondence((1,), (2,), 2 * 8 / (20 + 8), True),
        metrics.Correspondence((), (1,), 0.0, False),
    }
    assert (result.tp, result.fp, result.recall) == (1, 0, 0.5)
    assert (result.n_ref_large, result.tp_large, result.recall_large) == (1, 0, 0.0)
    assert result.ref_diameters_mm[0] >= 12.0 and result.ref_diameters_mm[1] < 10.0


def test_axial_diameter_is_anisotropic_and_ignores_z():
    """A 4 x 10 pixel rectangle (rows y at 2 mm, columns x at 0.5 mm) on three slices at 3 mm: scikit-image's
    Feret diameter runs through pixel-edge midpoints, here from (row -0.5, col 0) to (row 3.5, col 9)."""
    labels = boxes(np.s_[2:5, 10:14, 10:20], shape=(6, 16, 30)).astype(np.int32)
    expected = math.hypot(4 * 2.0, 9 * 0.5)
    assert metrics.axial_diameters(labels, 1, (0.5, 2.0, 3.0)) == pytest.approx([expected])
    line_x = boxes(np.s_[0, 0, 0:21]).astype(np.int32)
    line_y = boxes(np.s_[0, 0:21, 0], shape=(1, 30, 30)).astype(np.int32)
    assert metrics.axial_diameters(line_x, 1, (0.5, 0.1, 9.0)) == pytest.approx([21 * 0.5])
    assert metrics.axial_diameters(line_y, 1, (0.1, 0.5, 9.0)) == pytest.approx([21 * 0.5])


def test_axial_diameters_skip_only_sections_that_cannot_win():
    """The bound-and-skip measurement equals scikit-image's Feret diameter of every section, maximised."""
    from skimage.measure import regionprops

    rng = np.random.default_rng(0)
    for _ in range(10):
        labels, count = ndimage.label(ndimage.gaussian_filter(rng.random((10, 50, 60)), 3) > 0.52)
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        every = np.zeros(count)
        for z in range(labels.shape[0]):
            for region in regionprops(labels[z], spacing=(spacing[1], spacing[0])):
                every[region.label - 1] = max(every[region.label - 1], region.feret_diameter_max)
        assert count > 1 and np.array_equal(metrics.axial_diameters(labels, count, spacing), every)


def test_lesion_table_on_known_boxes():
    label = np.zeros((8, 20, 40), dtype=np.uint8)
    label[1:7, 5:18, 5:35] = 1
    label[2:5, 10:14, 20:30] = 2  # 3 x 4 x 10 voxels
    label[6, 16, 6] = 2  # a one-voxel lesion
    ct = np.full(label.shape, -50.0)
    ct[label == 2] = 40.0
    ct[2, 10, 20] = 160.0  # mean of the box = (119 * 40 + 160) / 120 = 41
    spacing, origin, direction = (0.5, 2.0, 3.0), (10.0, -20.0, 5.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    box, dot = metrics.lesion_table(label, ct, spacing, origin, direction)
    assert (box.id, box.voxels) == (1, 120)
    assert box.volume_ml == pytest.approx(120 * 0.5 * 2.0 * 3.0 / 1000)
    assert box.largest_axial_diameter_mm == pytest.approx(math.hypot(4 * 2.0, 9 * 0.5))
    assert box.mean_hu == pytest.approx(41.0)
    assert box.centre_ijk == pytest.approx((24.5, 11.5, 3.0))  # (x, y, z) = mean of 20..29, 10..13, 2..4
    assert box.centre_lps_mm == pytest.approx((10 - 0.5 * 24.5, -20 - 2.0 * 11.5, 5 + 3.0 * 3.0))
    assert (dot.voxels, dot.centre_ijk, dot.largest_axial_diameter_mm) == (
        1,
        (6.0, 16.0, 6.0),
        pytest.approx(2.0),
    )
    assert math.isnan(metrics.lesion_table(label, None, spacing, origin, direction)[0].mean_hu)
    assert metrics.lesion_table(label == 1, None, spacing) == []
