"""Networks: Res2Net backbone, R2UNet (stage 1, and the stage-2 baseline), E2Net (stage 2)."""

from __future__ import annotations

from torch import nn

from ..config import NetworkConfig
from .e2net import E2Net, E2NetOutput
from .r2unet import R2UNet
from .res2net import Res2Net

ARCHITECTURES = {"r2unet": R2UNet, "e2net": E2Net}


def build_network(config: NetworkConfig) -> nn.Module:
    try:
        return ARCHITECTURES[config.arch](config)
    except KeyError:
        raise ValueError(
            f"unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def segmentation_logits(output) -> torch.Tensor:  # noqa: F821
    """The prediction of either network: R2UNet's logits or E2Net's fused s2."""
    return output.s2 if isinstance(output, E2NetOutput) else output


__all__ = ["E2Net", "E2NetOutput", "R2UNet", "Res2Net", "build_network", "segmentation_logits"]
