"""Precise BatchNorm statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021) before each validation.

Why: BatchNorm's running averages (momentum 0.1) mix statistics of the last few weights, which change fast at
lr 0.01 with small batches. Measured on case01 after 160 stage-2 steps of batch 4 (lite): liver Dice 0.03 with
the running averages, 0.74 with batch statistics and 0.78 with statistics recomputed on un-augmented training
samples for the final weights. Validation and the checkpoints (inference folds BatchNorm into the convolutions)
therefore use recomputed statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..models import channels_last


@torch.no_grad()
def recalibrate_batchnorm(
    network: nn.Module,
    images: Iterable[torch.Tensor],
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> None:
    """Replace every BatchNorm's running mean / variance by their average over the `images` batches
    (B, K, H, W) under the current weights (K context slices, as the network's input)."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    was_training = network.training
    network.train()
    for image in images:
        image = channels_last(image.to(device))
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            network(image)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    network.train(was_training)
