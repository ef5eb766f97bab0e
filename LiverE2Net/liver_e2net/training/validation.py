"""Validation on held-out cases, prepared as inference prepares them (no crops, no augmentation).

Stage 1 sees every slice of each case on its stage-1 grid (a 3D stage 1: each whole case); stage 2 sees the ground-truth liver box with the
inference margins (box_margin_mm in-plane, PreprocessingConfig.z_margin in z) resized to stage2_size. Loss and Dice are
summed over slices (Dice from summed tp/fp/fn, a global Dice), and summed across processes under DDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from ..models import channels_last, segmentation_logits
from ..preprocessing import (
    context_stack,
    downsample_volume,
    normalize_hu,
    pad_to_multiple,
    resize,
    stage1_grid,
    stage1_size,
)
from .cache import CachedCase
from .distributed import Distributed
from .losses import stage1_loss, stage2_loss
from .targets import edge_targets

CHANNELS = ("liver", "tumor")


@dataclass(frozen=True)
class ValidationResult:
    loss: float
    dice: dict[str, float | None]  # None where Dice is undefined: no reference and no prediction


def dice_from_counts(tp: float, fp: float, fn: float) -> float | None:
    denominator = 2 * tp + fp + fn
    return None if denominator == 0 else 2 * tp / denominator


def stage1_batches(
    cases: list[CachedCase], model_config: ModelConfig, batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image (B, K, h, w) of K context slices, liver (B, 1, h, w)) per chunk of this process's slices, one
    case at a time."""
    prep = model_config.preprocessing
    if model_config.stage1.volumetric:
        yield from stage1_volumes(cases[rank::world_size], model_config)
        return
    for case in cases:
        size = stage1_size(case.shape[1:], (case.spacing[1], case.spacing[0]), prep.stage1_pixel_mm)
        for chunk in _chunks(range(rank, case.shape[0], world_size), batch_size):
            image = _image(case.ct, chunk, model_config)
            liver = torch.from_numpy((case.label[chunk] >= 1).astype(np.float32))[:, None]
            yield resize(image, size), (resize(liver, size) > 0.5).float()


def stage1_volumes(cases: list[CachedCase], model_config: ModelConfig
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """A 3D stage 1's (image (1, 1, D, H, W), liver (1, 1, D, H, W)): each whole case as inference prepares it,
    padded to the network stride."""
    prep = model_config.preprocessing
    stride = model_config.stage1.volume_stride
    for case in cases:
        grid = stage1_grid(case.shape, case.spacing, prep.stage1_pixel_mm)
        image = normalize_hu(downsample_volume(case.ct, grid), prep.hu_window)[None, None]
        liver = (downsample_volume(case.label >= 1, grid) > 0.5).float()[None, None]
        yield pad_to_multiple(image, stride, -1.0)[0], pad_to_multiple(liver, stride, 0.0)[0]


def stage2_batches(
    cases: list[CachedCase],
    model_config: ModelConfig,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    edge_target: str = "distance",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(image (B, K, S, S) of K context slices, masks (B, 2, S, S), edge targets (B, 2, S, S)) over each
    case's padded liver box."""
    prep = model_config.preprocessing
    size = (prep.stage2_size, prep.stage2_size)
    for case in cases:
        box, (depth, height, width) = case.liver_box, case.shape
        margin_y, margin_x = (int(round(prep.box_margin_mm / s)) for s in (case.spacing[1], case.spacing[0]))
        rows = slice(max(0, box.y0 - margin_y), min(height, box.y1 + margin_y))
        columns = slice(max(0, box.x0 - margin_x), min(width, box.x1 + margin_x))
        z_margin = prep.z_margin(case.spacing[2])
        z_range = range(
            max(0, box.z0 - z_margin) + rank,
            min(depth, box.z1 + z_margin),
            world_size,
        )
        for chunk in _chunks(z_range, batch_size):
            image = _image(case.ct[:, rows, columns], chunk, model_config)
            label = case.label[chunk, rows, columns]
            masks = torch.from_numpy(np.stack([label >= 1, label == 2], axis=1).astype(np.float32))
            masks = (resize(masks, size) > 0.5).float()
            edges = np.stack([edge_targets(m, edge_target) for m in masks.numpy().astype(bool)])
            edges = torch.from_numpy(edges)
            yield resize(image, size), masks, edges


@torch.no_grad()
def validate(
    stage: int,
    network: torch.nn.Module,
    cases: list[CachedCase],
    model_config: ModelConfig,
    batch_size: int,
    device: torch.device,
    autocast: torch.dtype | None,
    distributed: Distributed,
    edge_target: str = "distance",
    tumor_pos_weight: float = 1.0,
) -> ValidationResult:
    network.eval()
    channels = 1 if stage == 1 else 2
    sums = torch.zeros(
        2 + 3 * channels, dtype=torch.float64
    )  # loss sum, slice count, (tp, fp, fn) per channel
    batches = (
        stage1_batches(cases, model_config, batch_size, distributed.rank, distributed.world_size)
        if stage == 1
        else stage2_batches(
            cases, model_config, batch_size, distributed.rank, distributed.world_size, edge_target
        )
    )
    amp = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
    for image, *targets in batches:
        image = channels_last(image.to(device))
        targets = [t.to(device) for t in targets]
        with amp:
            output = network(image)
        if stage == 1:
            loss, _ = stage1_loss(output, *targets)
        else:
            loss, _ = stage2_loss(output, *targets, tumor_pos_weight=tumor_pos_weight)
        prediction = segmentation_logits(output).float() > 0  # logit > 0 <=> probability > 0.5
        reference = targets[0] > 0.5
        counts = [(prediction & reference), (prediction & ~reference), (~prediction & reference)]
        sums[0] += loss.item() * image.shape[0]
        sums[1] += image.shape[0]
        spatial = (0, *range(2, prediction.ndim))  # all but the channel
        sums[2:] += torch.stack([c.sum(dim=spatial) for c in counts], dim=1).flatten().double().cpu()
    sums = distributed.all_reduce_sum(sums)
    counts = sums[2:].view(channels, 3).tolist()
    dice = {
        name: dice_from_counts(*counts[index]) if index < channels else None
        for index, name in enumerate(CHANNELS)
    }
    return ValidationResult(float(sums[0] / max(sums[1].item(), 1)), dice)


def _image(volume_zyx: np.ndarray, chunk: list[int], model_config: ModelConfig) -> torch.Tensor:
    """Slices `chunk` with their context neighbours, normalised as inference does: (B, K, y, x)."""
    prep = model_config.preprocessing
    stack = context_stack(volume_zyx, chunk, prep.context_slices)
    return normalize_hu(torch.from_numpy(stack), prep.hu_window)


def _chunks(indices: range, size: int) -> Iterator[list[int]]:
    indices = list(indices)
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
