"""Networks: Res2Net backbone, R2UNet (stage 1, and the stage-2 baseline), E2Net (stage 2), UNet3D (a 3D stage 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import NetworkConfig
from .e2net import E2Net, E2NetOutput
from .r2unet import R2UNet
from .res2net import Res2Net
from .unet3d import UNet3D

ARCHITECTURES = {"r2unet": R2UNet, "e2net": E2Net, "unet3d": UNet3D}


def build_network(config: NetworkConfig) -> nn.Module:
    try:
        return ARCHITECTURES[config.arch](config)
    except KeyError:
        raise ValueError(
            f"unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A batch (4D: slices, 5D: volumes) in the channels-last layout oneDNN and cuDNN convolve fastest."""
    layout = torch.channels_last_3d if tensor.ndim == 5 else torch.channels_last
    return tensor.contiguous(memory_format=layout)


def to_channels_last(network: nn.Module) -> nn.Module:
    """`network`'s convolution weights in the layout `channels_last` gives its inputs."""
    volumetric = any(isinstance(m, nn.Conv3d) for m in network.modules())
    return network.to(memory_format=torch.channels_last_3d if volumetric else torch.channels_last)


def segmentation_logits(output) -> torch.Tensor:
    """The prediction in a network's training output: R2UNet's logits or E2Net's fused s2 (inference calls
    `network.predict`, which skips what only training reads)."""
    return output.s2 if isinstance(output, E2NetOutput) else output


__all__ = [
    "E2Net",
    "E2NetOutput",
    "R2UNet",
    "Res2Net",
    "UNet3D",
    "build_network",
    "channels_last",
    "segmentation_logits",
    "to_channels_last",
]
