"""Paper losses (eq. 1-3): IoU + BCE for segmentation, 4 x BCE for the edge-distance map.

BCE is the mean over pixels (eq. 1 sums; the mean only rescales it and keeps the paper's learning rate
meaningful at any image size). The IoU loss works on sigmoid probabilities per image and channel, with a
smoothing of 1 pixel in numerator and denominator: without it a slice with no liver (or no tumor) has
IoU loss 1 whatever the prediction, so the network would never learn to predict nothing there.

`tumor_pos_weight` (1 = the paper) weights the tumor pixels in the BCE terms, as the weighted cross-entropy
of H-DenseUNet and Chlebus et al.: tumors cover well under 1 % of a slice, and with the plain loss a small
decoder on a short (CPU) training budget settles on "no tumor anywhere" before it learns what one looks like.

`liver_distillation_loss` keeps a fine-tune's liver channel at a teacher's (the --init network's) soft output, as
in learning without forgetting (Li and Hoiem, TPAMI 2018): fine-tunes for tumors re-fit the shared decoder and cost
the held-out liver 0.001-0.002 Dice, although the training livers were fitted as well as before.

`lesion_loss_weight` (0 = off) adds a lesion-wise IoU loss on the tumor channel (the "blob loss" of Kofler et
al., IPMI 2023): each tumor component of the target is scored on its own, with the other components masked out,
and the scores are averaged over components. In the per-image IoU a 5 mm lesion beside a 40 mm one is worth a
fraction of a percent of the loss; here it counts as much as the large one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..models import E2NetOutput

EDGE_WEIGHT = 4.0
IOU_SMOOTH = 1.0


def iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) (or volumes (B, C, D, H, W)) logits and {0, 1} targets -> mean over images and channels of
    1 - soft IoU."""
    probability = torch.sigmoid(logits.float())
    spatial = tuple(range(2, logits.ndim))
    intersection = (probability * target).sum(dim=spatial)  # (B, C)
    union = (probability + target - probability * target).sum(dim=spatial)
    return (1.0 - (intersection + IOU_SMOOTH) / (union + IOU_SMOOTH)).mean()


def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    return iou_loss(logits, target) + bce_loss(logits, target, pos_weight)


def _channel_pos_weight(tumor_pos_weight: float, like: torch.Tensor) -> torch.Tensor | None:
    """(1, 2, 1, 1) weights of the positive pixels per channel: liver 1, tumor `tumor_pos_weight`."""
    if tumor_pos_weight == 1.0:
        return None
    return torch.tensor([1.0, tumor_pos_weight], device=like.device).view(1, 2, 1, 1)


def lesion_masks(target: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(B, H, W) {0, 1} tumor targets -> (image index, (N, H, W) one-hot 2D components) of each image with a tumor.
    Labelled once per batch and shared by the segmentation heads."""
    masks = []
    for image, mask in enumerate(target.detach().cpu().numpy() > 0.5):
        labels, count = ndimage.label(mask)
        if count:
            one_hot = labels[None] == np.arange(1, count + 1)[:, None, None]
            masks.append((image, torch.from_numpy(one_hot).to(target.device, torch.float32)))
    return masks


def lesion_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, masks: list[tuple[int, torch.Tensor]] | None = None
) -> torch.Tensor:
    """(B, H, W) tumor logits and {0, 1} targets -> mean over the target's 2D components of 1 - soft IoU, each
    component scored against the prediction with the other components masked out (background stays in, so a
    false positive lowers every component's score). 0 when no image holds a tumor. `masks`: lesion_masks(target)."""
    probability = torch.sigmoid(logits.float())
    losses = []
    for image, one_hot in lesion_masks(target) if masks is None else masks:
        visible = probability[image] * (1.0 - (target[image] - one_hot).clamp(min=0))  # others masked out
        intersection = (visible * one_hot).sum(dim=(1, 2))
        union = (visible + one_hot - visible * one_hot).sum(dim=(1, 2))
        losses.append(1.0 - (intersection + IOU_SMOOTH) / (union + IOU_SMOOTH))
    return torch.cat(losses).mean() if losses else logits.sum() * 0.0


def stage1_loss(logits: torch.Tensor, liver: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """l_1st = IoU(g, s) + BCE(g, s); logits and liver (B, 1, H, W), or (B, 1, D, H, W) for a 3D stage 1."""
    iou, bce = iou_loss(logits, liver), bce_loss(logits, liver)
    return iou + bce, {"iou": iou.detach(), "bce": bce.detach()}


def stage2_loss(
    output: E2NetOutput | torch.Tensor,
    masks: torch.Tensor,
    edges: torch.Tensor,
    tumor_pos_weight: float = 1.0,
    lesion_loss_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """E2Net: l_2nd = IoU+BCE(g_m, s1) + IoU+BCE(g_m, s2) + 4 BCE(g_e, e); masks and edges (B, 2, H, W)
    liver/tumor. An R2UNet in stage 2 (the baseline of the paper's Table 3) has no edge branch: its loss is the
    segmentation loss IoU+BCE(g_m, s) on its logits alone, with the same tumor weighting. A lesion weight adds
    that many lesion-wise IoU losses of each segmentation output's tumor channel."""
    pos_weight = _channel_pos_weight(tumor_pos_weight, masks)
    lesions = lesion_masks(masks[:, 1]) if lesion_loss_weight else []

    def segmentation(logits: torch.Tensor) -> torch.Tensor:
        loss = segmentation_loss(logits, masks, pos_weight)
        if lesion_loss_weight:
            loss = loss + lesion_loss_weight * lesion_iou_loss(logits[:, 1], masks[:, 1], lesions)
        return loss

    if not isinstance(output, E2NetOutput):
        s = segmentation(output)
        return s, {"s": s.detach()}
    s1, s2 = segmentation(output.s1), segmentation(output.s2)
    edge = bce_loss(output.edge, edges)
    return s1 + s2 + EDGE_WEIGHT * edge, {"s1": s1.detach(), "s2": s2.detach(), "edge": edge.detach()}


def liver_distillation_loss(
    output: E2NetOutput | torch.Tensor, teacher: E2NetOutput | torch.Tensor
) -> torch.Tensor:
    """BCE of each segmentation output's liver channel against the teacher's final liver probability (for an
    E2Net: its s2, the output inference uses). Outputs (B, 2, H, W) logits, as stage2_loss takes them."""
    target = torch.sigmoid((teacher.s2 if isinstance(teacher, E2NetOutput) else teacher)[:, :1].float()).detach()
    heads = (output.s1, output.s2) if isinstance(output, E2NetOutput) else (output,)
    return sum(bce_loss(logits[:, :1], target) for logits in heads)
