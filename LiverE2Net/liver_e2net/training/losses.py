"""Paper losses (eq. 1-3): IoU + BCE for segmentation, 4 x BCE for the edge-distance map.

BCE is the mean over pixels (eq. 1 sums; the mean only rescales it and keeps the paper's learning rate
meaningful at any image size). The IoU loss works on sigmoid probabilities per image and channel, with a
smoothing of 1 pixel in numerator and denominator: without it a slice with no liver (or no tumor) has
IoU loss 1 whatever the prediction, so the network would never learn to predict nothing there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import E2NetOutput

EDGE_WEIGHT = 4.0
IOU_SMOOTH = 1.0


def iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits and {0, 1} targets -> mean over images and channels of 1 - soft IoU."""
    probability = torch.sigmoid(logits.float())
    intersection = (probability * target).sum(dim=(-2, -1))  # (B, C)
    union = (probability + target - probability * target).sum(dim=(-2, -1))
    return (1.0 - (intersection + IOU_SMOOTH) / (union + IOU_SMOOTH)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return iou_loss(logits, target) + bce_loss(logits, target)


def stage1_loss(logits: torch.Tensor, liver: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """l_1st = IoU(g, s) + BCE(g, s); logits and liver (B, 1, H, W)."""
    iou, bce = iou_loss(logits, liver), bce_loss(logits, liver)
    return iou + bce, {"iou": iou.detach(), "bce": bce.detach()}


def stage2_loss(
    output: E2NetOutput, masks: torch.Tensor, edges: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """l_2nd = IoU+BCE(g_m, s1) + IoU+BCE(g_m, s2) + 4 BCE(g_e, e); masks and edges (B, 2, H, W) liver/tumor."""
    s1 = segmentation_loss(output.s1, masks)
    s2 = segmentation_loss(output.s2, masks)
    edge = bce_loss(output.edge, edges)
    return s1 + s2 + EDGE_WEIGHT * edge, {"s1": s1.detach(), "s2": s2.detach(), "edge": edge.detach()}
