"""Object-level tumor false-positive filter after Chlebus et al. (Sci. Rep. 2018, "object-based postprocessing").

Each 3D tumor component of the network output is a candidate. Features of its size and shape, intensity, network
confidence and depth in the liver go to a random forest that calls it a true or a false positive; rejected
candidates become liver. The forest is kept as plain arrays inside the checkpoint (no pickle), so loading a model
never runs code; prediction is numpy, and scikit-learn is needed only to train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import edt
import numpy as np
import torch
from scipy import ndimage

from .errors import UserInputError
from .extras import require
from .postprocessing import DEFAULT_MIN_LESION_ML, label_components
from .protocol import FP_FILTER_MODES

FEATURE_NAMES = (
    "volume_ml",
    "z_extent_mm",
    "eigenvalue_1_mm2",  # principal-axis variances of the solid, largest first
    "eigenvalue_2_mm2",
    "eigenvalue_3_mm2",
    "elongation",  # sqrt(eigenvalue_1 / eigenvalue_2)
    "flatness",  # sqrt(eigenvalue_2 / eigenvalue_3)
    "compactness",  # 36 pi V^2 / A^3 with A the area of exposed voxel faces
    "mean_hu",
    "std_hu",
    "contrast_hu",  # mean HU minus the median HU of the tumor-free liver: robust to contrast phase and scanner
    "mean_probability",
    "max_probability",
    "mean_boundary_distance_mm",
    "std_boundary_distance_mm",
)
FILTER_FORMAT_VERSION = 1
TREE_ARRAYS = {  # payload key -> dtype of the (trees, nodes) array
    "children_left": torch.int32,
    "children_right": torch.int32,
    "feature": torch.int32,
    "split_threshold": torch.float64,
    "tp_probability": torch.float64,
}
MIN_CANDIDATES_PER_CLASS = 3  # fewer true or false positives than this cannot train a useful filter
LIVER_LABEL, TUMOR_LABEL = 1, 2
# Depth in the liver is measured up to this distance: false positives sit at its border (gallbladder, hilum),
# and the cap confines the distance transform to boxes around the candidates instead of the whole liver.
BOUNDARY_DISTANCE_CAP_MM = 20.0


def candidate_features(
    components: np.ndarray,
    count: int,
    ct_hu: np.ndarray,
    tumor_probability: np.ndarray,
    liver: np.ndarray,
    spacing: Sequence[float],
) -> np.ndarray:
    """(count, len(FEATURE_NAMES)) features of components 1..count of a [z, y, x] label array.

    `liver` is the liver region (tumors included), `spacing` (x, y, z) mm. Outside the arrays counts as outside
    the liver, so a crop holding the whole liver gives the features of the full volume.
    """
    features = np.zeros((count, len(FEATURE_NAMES)))
    if count == 0:
        return features
    sampling = np.array([spacing[2], spacing[1], spacing[0]], dtype=float)  # (z, y, x) mm
    zyx = np.nonzero(components)
    owner = components[zyx].astype(np.int64) - 1
    voxels = np.bincount(owner, minlength=count).astype(float)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=count) / voxels

    def std(values: np.ndarray) -> np.ndarray:
        return np.sqrt(mean((values - mean(values)[owner]) ** 2))

    eigenvalues = _principal_variances(zyx, owner, voxels, sampling, mean)
    volume_mm3 = voxels * float(np.prod(sampling))
    hu = np.asarray(ct_hu)[zyx].astype(float)
    probability = np.asarray(tumor_probability)[zyx].astype(float)
    tumor_free_liver = np.asarray(ct_hu)[np.asarray(liver, bool) & (components == 0)]
    liver_hu = float(np.median(tumor_free_liver)) if tumor_free_liver.size else float(np.mean(hu))
    distance = _boundary_distance(
        zyx, owner, components, np.asarray(liver, bool) | (components > 0), sampling
    )
    index = np.arange(count)
    features[:] = np.stack(
        [
            volume_mm3 / 1000.0,
            (ndimage.maximum(zyx[0], owner, index) - ndimage.minimum(zyx[0], owner, index) + 1) * sampling[0],
            *eigenvalues.T,
            np.sqrt(eigenvalues[:, 0] / eigenvalues[:, 1]),
            np.sqrt(eigenvalues[:, 1] / eigenvalues[:, 2]),
            36.0 * np.pi * volume_mm3**2 / _face_areas(components, count, sampling) ** 3,
            mean(hu),
            std(hu),
            mean(hu) - liver_hu,
            mean(probability),
            ndimage.maximum(probability, owner, index),
            mean(distance),
            std(distance),
        ],
        axis=1,
    )
    return features


def _principal_variances(zyx, owner, voxels, sampling, mean) -> np.ndarray:
    """(count, 3) eigenvalues of each component's covariance in mm^2, largest first. Each voxel counts as a solid
    box (its own variance s^2 / 12 per axis), so one-voxel or one-slice candidates get finite ratios."""
    centred = [(axis * s) - mean(axis * s)[owner] for axis, s in zip(zyx, sampling, strict=True)]
    covariance = np.empty((voxels.size, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            covariance[:, i, j] = covariance[:, j, i] = mean(centred[i] * centred[j])
        covariance[:, i, i] += sampling[i] ** 2 / 12.0
    return np.linalg.eigvalsh(covariance)[:, ::-1]


def _face_areas(components: np.ndarray, count: int, sampling: np.ndarray) -> np.ndarray:
    """Surface of each component in mm^2: voxel faces shared with another label or the outside."""
    box = _grown_box(components > 0, np.ones(3, int))
    padded = _crop(components, box)
    area = np.zeros(count + 1)
    for axis in range(3):
        face_mm2 = float(np.prod(np.delete(sampling, axis)))
        low = padded[tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))]
        high = padded[tuple(slice(1, None) if a == axis else slice(None) for a in range(3))]
        differs = low != high
        for side in (low[differs], high[differs]):
            area += np.bincount(side, minlength=count + 1) * face_mm2
    return area[1:]


def _boundary_distance(
    zyx: tuple[np.ndarray, ...],
    owner: np.ndarray,
    components: np.ndarray,
    liver: np.ndarray,
    sampling: np.ndarray,
) -> np.ndarray:
    """Distance in mm from each candidate voxel `zyx` to the nearest voxel outside the liver (or the arrays),
    capped at BOUNDARY_DISTANCE_CAP_MM. Exact within the cap: each distance transform runs on a candidate's box
    grown by the cap (or on one box around all candidates, when that is smaller)."""
    margin = np.ceil(BOUNDARY_DISTANCE_CAP_MM / sampling).astype(int) + 1
    boxes = [
        [(s.start - m, s.stop + m) for s, m in zip(found, margin, strict=True)]
        for found in ndimage.find_objects(components, max_label=owner.max() + 1)
    ]
    union = [(min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3)]
    if _size(union) <= sum(_size(box) for box in boxes):
        boxes, members = [union], [np.arange(owner.size)]
    else:
        members = [np.flatnonzero(owner == k) for k in range(len(boxes))]
    distance = np.full(owner.size, BOUNDARY_DISTANCE_CAP_MM)
    for box, voxels in zip(boxes, members, strict=True):
        inside = _crop(liver, box)
        if not inside.all():  # edt: 5x scipy's transform on a liver box (2026-12-03), equal to 1e-5 mm
            distance_mm = edt.edt(inside, anisotropy=tuple(float(v) for v in sampling), black_border=False, parallel=1)
            at = tuple(axis[voxels] - lo for axis, (lo, _) in zip(zyx, box, strict=True))
            distance[voxels] = np.minimum(distance_mm[at], BOUNDARY_DISTANCE_CAP_MM)  # the candidates' voxels only
    return distance


def _size(box: list[tuple[int, int]]) -> int:
    return int(np.prod([hi - lo for lo, hi in box]))


def _grown_box(mask: np.ndarray, margin: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)] per axis of the mask's bounding box grown by `margin`; may reach outside the array."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hits[0]) - int(margin[axis]), int(hits[-1]) + 1 + int(margin[axis])))
    return box


def _crop(array: np.ndarray, box: list[tuple[int, int]]) -> np.ndarray:
    """array[box], with zeros (False) where the box reaches outside the array."""
    result = np.zeros([hi - lo for lo, hi in box], dtype=array.dtype)
    within = tuple(slice(max(lo, 0), min(hi, size)) for (lo, hi), size in zip(box, array.shape, strict=True))
    target = tuple(slice(w.start - lo, w.stop - lo) for w, (lo, _) in zip(within, box, strict=True))
    result[target] = array[within]
    return result


@dataclass(frozen=True)
class TreeEnsemble:
    """A random forest as (trees, nodes) arrays, padded with leaves: sklearn's tree layout, children -1 at leaves.

    `tp_probability` is the share of (class-weighted) true positives at each node; a forest's probability is the
    mean over its trees of the leaf reached, as in scikit-learn.
    """

    children_left: np.ndarray  # (trees, nodes) int32
    children_right: np.ndarray
    feature: np.ndarray  # int32, 0 at leaves
    split_threshold: np.ndarray  # float64: go left when feature <= threshold
    tp_probability: np.ndarray  # float64

    def __post_init__(self) -> None:
        shape = self.children_left.shape
        if len(shape) != 2 or 0 in shape or any(getattr(self, n).shape != shape for n in TREE_ARRAYS):
            raise ValueError(f"tree arrays must share one (trees, nodes) shape, got {shape}")
        nodes = np.arange(shape[1])
        for children in (self.children_left, self.children_right):
            # Children after their parent (as sklearn builds trees): every walk ends at a leaf.
            if np.any((children != -1) & ((children <= nodes) | (children >= shape[1]))):
                raise ValueError("tree arrays hold a child index out of order or out of range")
        if np.any((self.children_left == -1) != (self.children_right == -1)):
            raise ValueError("tree arrays hold a node with only one child")
        if np.any(self.feature < 0) or not np.all((self.tp_probability >= 0) & (self.tp_probability <= 1)):
            raise ValueError("tree arrays hold a negative feature index or a probability outside [0, 1]")

    @property
    def features(self) -> int:
        return int(self.feature.max()) + 1

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, 2) probabilities [false positive, true positive] of (n, F) features, equal to scikit-learn's."""
        x = np.asarray(features, dtype=np.float32).astype(np.float64)  # sklearn compares float32 inputs
        if x.ndim != 2 or x.shape[1] < self.features:
            raise ValueError(f"features must be (n, >= {self.features}), got {x.shape}")
        trees = np.arange(self.children_left.shape[0])[:, None]
        samples = np.arange(x.shape[0])[None, :]
        node = np.zeros((trees.size, x.shape[0]), dtype=np.int64)
        for _ in range(self.children_left.shape[1]):
            left = self.children_left[trees, node]
            if np.all(left == -1):
                break
            go_left = x[samples, self.feature[trees, node]] <= self.split_threshold[trees, node]
            node = np.where(left == -1, node, np.where(go_left, left, self.children_right[trees, node]))
        tp = self.tp_probability[trees, node].mean(axis=0)
        return np.stack([1.0 - tp, tp], axis=1)


@dataclass(frozen=True)
class FalsePositiveFilter:
    """The forest, what it expects and which model it belongs to (fingerprint of that model's stage-2 weights)."""

    ensemble: TreeEnsemble
    model_fingerprint: str
    feature_names: tuple[str, ...] = FEATURE_NAMES
    decision_threshold: float = 0.5  # keep a candidate whose true-positive probability is at least this
    training: dict[str, Any] = field(default_factory=dict)  # plain JSON-like data: cases, counts, accuracy
    # The minimum lesion size of the candidates it was trained on, and so the size `segment` drops smaller tumors
    # at while this filter runs: the forest has seen no smaller one. Filters before this field were trained at 0.05.
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML

    def keep(self, features: np.ndarray) -> np.ndarray:
        return self.ensemble.predict_proba(features)[:, 1] >= self.decision_threshold

    def to_payload(self) -> dict[str, Any]:
        """Tensors and plain data only: what `torch.load(weights_only=True)` reads back."""
        arrays = {
            key: torch.from_numpy(np.ascontiguousarray(getattr(self.ensemble, key))).to(dtype)
            for key, dtype in TREE_ARRAYS.items()
        }
        return {
            "format_version": FILTER_FORMAT_VERSION,
            **arrays,
            "feature_names": list(self.feature_names),
            "decision_threshold": float(self.decision_threshold),
            "model_fingerprint": str(self.model_fingerprint),
            "training": _plain(self.training),
            "min_lesion_ml": float(self.min_lesion_ml),
        }

    @classmethod
    def from_payload(cls, payload: Any, source: str) -> FalsePositiveFilter:
        """Checks everything; a bad or foreign filter is a UserInputError naming `source` (the model file)."""
        if not isinstance(payload, dict) or payload.get("format_version") != FILTER_FORMAT_VERSION:
            version = payload.get("format_version") if isinstance(payload, dict) else None
            raise UserInputError(
                f"{source}: its false-positive filter has format version {version}, this liver-e2net reads "
                f"version {FILTER_FORMAT_VERSION}; retrain it with liver-e2net train-fp-filter"
            )
        names = tuple(payload.get("feature_names") or ())
        if names != FEATURE_NAMES:
            raise UserInputError(
                f"{source}: its false-positive filter uses features {', '.join(names) or '(none)'}, this "
                f"liver-e2net computes {', '.join(FEATURE_NAMES)}; retrain it with liver-e2net train-fp-filter"
            )
        try:
            arrays = {key: payload[key] for key in TREE_ARRAYS}
            if not all(isinstance(a, torch.Tensor) and a.dtype == TREE_ARRAYS[k] for k, a in arrays.items()):
                raise ValueError("tree arrays must be tensors of the documented types")
            ensemble = TreeEnsemble(**{key: value.numpy() for key, value in arrays.items()})
            if ensemble.features > len(FEATURE_NAMES):
                raise ValueError(f"a tree splits on feature {ensemble.features - 1} of {len(FEATURE_NAMES)}")
            threshold = float(payload["decision_threshold"])
            fingerprint = str(payload["model_fingerprint"])
            min_lesion_ml = float(payload.get("min_lesion_ml", DEFAULT_MIN_LESION_ML))
            if not (math.isfinite(min_lesion_ml) and min_lesion_ml >= 0):
                raise ValueError(f"minimum lesion size {min_lesion_ml} ml")
        except (KeyError, TypeError, ValueError) as error:
            raise UserInputError(
                f"{source}: its false-positive filter is damaged ({error}); retrain it with "
                "liver-e2net train-fp-filter"
            ) from error
        return cls(ensemble, fingerprint, names, threshold, dict(payload.get("training") or {}), min_lesion_ml)


def _plain(value: Any) -> Any:
    """numpy scalars and tuples -> Python numbers and lists (weights-only loading refuses numpy objects)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def choose_filter(
    carried: FalsePositiveFilter | None, mode: str, model_name: str
) -> FalsePositiveFilter | None:
    """--fp-filter auto (the model's filter if it has one), on (it must have one) or off."""
    if mode not in FP_FILTER_MODES:
        raise UserInputError(f"unknown --fp-filter {mode!r}; choose one of {', '.join(FP_FILTER_MODES)}")
    if mode == "on" and carried is None:
        raise UserInputError(
            f"--fp-filter on: the model {model_name} carries no false-positive filter; train one with "
            f"liver-e2net train-fp-filter --model {model_name} --data DATA -o MODEL_WITH_FILTER.pt, "
            "or use --fp-filter auto or off"
        )
    return None if mode == "off" else carried


def apply_filter(
    label: np.ndarray,
    ct_hu: np.ndarray,
    tumor_probability: np.ndarray,
    spacing: Sequence[float],
    fp_filter: FalsePositiveFilter,
) -> tuple[np.ndarray, int]:
    """(label with rejected tumor components turned into liver, number rejected); `label` is {0, 1, 2}."""
    components, count = label_components(label == TUMOR_LABEL)
    if count == 0:
        return label, 0
    features = candidate_features(components, count, ct_hu, tumor_probability, label >= LIVER_LABEL, spacing)
    rejected = ~fp_filter.keep(features)
    if rejected.any():
        label = label.copy()
        label[np.concatenate([[False], rejected])[components]] = LIVER_LABEL
    return label, int(rejected.sum())


def fit_filter(
    features: np.ndarray, is_true: np.ndarray, seed: int = 0, trees: int = 256
) -> tuple[TreeEnsemble, dict[str, float]]:
    """A random forest (Chlebus et al.: 256 trees; classes balanced, since false positives usually dominate),
    exported to arrays, and its cross-validated accuracy (plain and balanced over the two classes)."""
    RandomForestClassifier = require("sklearn.ensemble", "training a false-positive filter").RandomForestClassifier

    is_true = np.asarray(is_true, dtype=bool)
    counts = {"true": int(is_true.sum()), "false": int((~is_true).sum())}
    if min(counts.values()) < MIN_CANDIDATES_PER_CLASS:
        raise UserInputError(
            f"{counts['true']} true-positive and {counts['false']} false-positive tumor candidates: at least "
            f"{MIN_CANDIDATES_PER_CLASS} of each are needed to train a false-positive filter; add labelled "
            "cases (with tumors) or more --synthetic-copies"
        )
    features = np.asarray(features, dtype=np.float64)
    forest = RandomForestClassifier(n_estimators=trees, class_weight="balanced", random_state=seed, n_jobs=1)
    accuracy = _cross_validated_accuracy(forest, features, is_true, seed)
    return export_forest(forest.fit(features, is_true)), accuracy


CV_FOLDS = 5


def _cross_validated_accuracy(forest, features: np.ndarray, is_true: np.ndarray, seed: int) -> dict[str, float]:
    """Accuracy on candidates each fold's forest did not see. Not the out-of-bag estimate: with class weights,
    scikit-learn 1.9 leaves every minority candidate without out-of-bag votes (all 48 true candidates of the base
    model), which read as a balanced accuracy of 0.5. Candidates of one CT are not independent, so this is still
    optimistic for CTs from elsewhere."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = min(CV_FOLDS, int(is_true.sum()), int((~is_true).sum()))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(forest, features, is_true, cv=split, method="predict_proba")[:, 1] >= 0.5
    recalls = [float(np.mean(predicted[is_true == c] == c)) for c in (True, False)]
    return {
        "cv_accuracy": float(np.mean(predicted == is_true)),
        "cv_balanced_accuracy": float(np.mean(recalls)),
        "cv_folds": folds,
    }


def export_forest(forest) -> TreeEnsemble:
    """A fitted binary sklearn forest -> TreeEnsemble (leaf values as the true-positive share)."""
    positive = list(forest.classes_).index(True)
    trees = [estimator.tree_ for estimator in forest.estimators_]
    nodes = max(tree.node_count for tree in trees)

    def stacked(get, fill, dtype) -> np.ndarray:
        array = np.full((len(trees), nodes), fill, dtype=dtype)
        for row, tree in zip(array, trees, strict=True):
            row[: tree.node_count] = get(tree)
        return array

    def tp_share(tree) -> np.ndarray:
        value = tree.value[:, 0, :]
        return value[:, positive] / value.sum(axis=1)

    return TreeEnsemble(
        stacked(lambda t: t.children_left, -1, np.int32),
        stacked(lambda t: t.children_right, -1, np.int32),
        stacked(lambda t: np.maximum(t.feature, 0), 0, np.int32),
        stacked(lambda t: t.threshold, 0.0, np.float64),
        stacked(tp_share, 0.0, np.float64),
    )
