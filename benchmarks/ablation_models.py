"""Model surgery for the ablation (benchmarks/ablation.py): variant configs on the shared stage 1, its widening
to a slice context, and the first stage run alone (Table 3's "1st stage" row)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from liver_e2net.checkpoint import INPUT_CONVOLUTION, Checkpoint
from liver_e2net.config import ModelConfig, with_context_slices
from liver_e2net.errors import UserInputError
from liver_e2net.models import build_network
from liver_e2net.postprocessing import largest_component
from liver_e2net.preprocessing import (
    context_stack,
    from_network_frame,
    normalize_hu,
    resize,
    stage1_size,
    to_network_frame,
)


def stage2_config(base: ModelConfig, name: str, arch: str, dcff: bool, context_slices: int) -> ModelConfig:
    """`base` with another stage 2 (2 outputs: liver, tumor) and slice context for both stages."""
    stage2 = dataclasses.replace(base.stage2, arch=arch, dcff=dcff, out_channels=2)
    config = dataclasses.replace(base, name=f"{base.name}-{name}", stage2=stage2)
    return with_context_slices(config, context_slices)


def initial_checkpoint(stage1: Checkpoint, config: ModelConfig, seed: int) -> Checkpoint:
    """The trained stage 1 (widened to the config's slice context) and a seeded random stage 2 of `config`."""
    torch.manual_seed(seed)
    stage2 = build_network(config.stage2).state_dict()
    weights = widen_input(stage1.stage1, config.preprocessing.context_slices)
    return Checkpoint(config, weights, stage2, {"name": f"ablation init {config.name}"})


def widen_input(state: dict[str, torch.Tensor], context_slices: int) -> dict[str, torch.Tensor]:
    """Stage-1 weights for `context_slices` input channels: the trained single-slice kernel on the middle (own)
    slice, zeros on the neighbours, so the network computes exactly what it did and finds the same liver box."""
    widened = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    for key, weight in widened.items():
        if key.endswith(INPUT_CONVOLUTION) and weight.shape[1] != context_slices:
            if weight.shape[1] != 1:
                raise UserInputError(
                    f"--stage1-model takes {weight.shape[1]} slices: give a single-slice model"
                )
            wide = torch.zeros(weight.shape[0], context_slices, *weight.shape[2:])
            wide[:, context_slices // 2] = weight[:, 0]
            widened[key] = wide
    return widened


@torch.inference_mode()
def stage1_liver(checkpoint: Checkpoint, image, device: torch.device, batch: int = 16) -> np.ndarray:
    """Table 3's "1st stage" row: stage 1 alone, its liver probability resized to the CT grid, > 0.5, largest 3D
    component (what the pipeline takes the liver box from), as a {0, 1} label map on the input grid."""
    network = checkpoint.build(device)[0]
    prep = checkpoint.config.preprocessing
    volume, record = to_network_frame(image)
    depth, height, width = volume.array.shape
    size = stage1_size((height, width), (volume.spacing[1], volume.spacing[0]), prep.stage1_pixel_mm)
    liver = np.zeros(volume.array.shape, bool)
    for start in range(0, depth, batch):
        stack = context_stack(volume.array, range(start, min(depth, start + batch)), prep.context_slices)
        slices = resize(normalize_hu(torch.from_numpy(stack), prep.hu_window), size)  # (B, K, h, w)
        probability = torch.sigmoid(network(slices.to(device)).float()).cpu()
        liver[start : start + batch] = (resize(probability, (height, width))[:, 0] > 0.5).numpy()
    return from_network_frame(largest_component(liver).astype(np.uint8), volume, record)


def stage1_training(checkpoint: Checkpoint) -> dict[str, Any]:
    """How the shared stage 1 was trained (from its metadata), for the report's fairness note."""
    meta = checkpoint.metadata.get("stage1_training") or checkpoint.metadata
    minutes = meta.get("seconds")
    return {
        "epochs": meta.get("stage_epochs", {}).get("stage1", meta.get("epochs")),
        "minutes": None if minutes is None else round(minutes / 60, 1),
        "train_config": meta.get("train_config"),
    }
