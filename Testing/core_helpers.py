"""Shared helpers for the core tests: real data locations and small random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from liver_e2net.checkpoint import Checkpoint, random_checkpoint
from liver_e2net.config import lite_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_CT = REPO / "Resources" / "SampleData" / "totalseg_example_ct.nii.gz"
SAMPLE_LABEL = REPO / "Resources" / "SampleData" / "totalseg_example_label.nii.gz"


def shared_case(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} absent (../shared/data is not beside this checkout)")
    return path


def biased_checkpoint(liver_bias: float = 4.0, tumor_bias: float = 0.0, seed: int = 0) -> Checkpoint:
    """A random lite model whose heads are biased so that it finds 'liver' and some 'tumor' everywhere it looks.

    Random weights alone may predict nothing; the bias makes the pipeline's later steps (box, stage 2, paste back,
    postprocessing) do real work on real CT.
    """
    checkpoint = random_checkpoint(lite_config(), seed=seed)
    checkpoint.stage1["head.conv.bias"] = torch.tensor([liver_bias])
    checkpoint.stage2["fusion_head.conv.bias"] = torch.tensor([liver_bias, tumor_bias])
    return checkpoint
