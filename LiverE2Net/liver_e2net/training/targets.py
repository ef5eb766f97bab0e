"""Targets of E2Net's edge branch (Tang et al. 2020, section 2): the paper's edge-distance map, or the plain
edge map of its ablation (Table 3, "+ edge" against "+ dist")."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EDGE_TARGETS = ("distance", "plain")


def mask_edge(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask -> its edge: mask pixels with a 4-neighbour outside the mask (the image border counts as
    outside), a 1-pixel band along the inside of the border."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def edge_distance_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask -> (H, W) float32 target in [0, 1], largest on the boundary.

    Precisely: edge = mask pixels with a 4-neighbour outside the mask (the image border counts as outside);
    d = Euclidean distance of every pixel to the nearest edge pixel; target = (1 - d / max(d over the mask))
    inside the mask, 0 outside. So edge pixels are 1, the deepest pixel of the mask is 0, and a mask made only
    of edge pixels is 1 everywhere. Why: the paper's answer to the edge/non-edge imbalance - pixels near the
    boundary, the hard ones, get the largest targets instead of a thin 1-pixel edge among zeros.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    edge = mask_edge(mask)
    distance = ndimage.distance_transform_edt(~edge) * mask
    deepest = distance.max()
    normalised = distance / deepest if deepest > 0 else distance
    return ((1.0 - normalised) * mask).astype(np.float32)


def edge_targets(masks: np.ndarray, kind: str = "distance") -> np.ndarray:
    """(C, H, W) masks (liver, tumor) -> (C, H, W) float32 edge targets, one per channel: `distance` the
    edge-distance map, `plain` the binary edge the distance map starts from (the paper's baseline edge
    supervision), so the two arms of the ablation differ by the distance transform alone."""
    if kind not in EDGE_TARGETS:
        raise ValueError(f"edge target {kind!r}: use one of {', '.join(EDGE_TARGETS)}")
    target = edge_distance_map if kind == "distance" else _plain_edge
    return np.stack([target(mask) for mask in masks])


def _plain_edge(mask: np.ndarray) -> np.ndarray:
    return mask_edge(mask).astype(np.float32)
