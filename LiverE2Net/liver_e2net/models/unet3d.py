"""A plain 3D UNet (Çiçek et al., MICCAI 2016) for a coarse liver on the whole CT at a few millimetres per voxel.

Each level: two 3x3x3 conv-BN-ReLU; down by a stride-2 convolution, up by trilinear interpolation to the skip's
size (so any input size a multiple of `stride` works) and concatenation. Logits at full input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetworkConfig


def conv_bn_relu_3d(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        widths = config.widths
        self.stride = config.volume_stride
        self.encoders = nn.ModuleList(
            [nn.Sequential(conv_bn_relu_3d(config.in_channels, widths[0]), conv_bn_relu_3d(widths[0], widths[0]))]
            + [
                nn.Sequential(conv_bn_relu_3d(low, high, stride=2), conv_bn_relu_3d(high, high))
                for low, high in zip(widths, widths[1:])
            ]
        )
        self.decoders = nn.ModuleList(
            nn.Sequential(conv_bn_relu_3d(high + low, low), conv_bn_relu_3d(low, low))
            for low, high in zip(widths, widths[1:])
        )
        self.head = nn.Conv3d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W), each of D, H, W a multiple of `stride` -> (B, out, D, H, W) logits."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for decoder, skip in zip(reversed(self.decoders), reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-3:], mode="trilinear", align_corners=False)
            x = decoder(torch.cat([x, skip], dim=1))
        return self.head(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction logits (every network has this; inference calls it)."""
        return self(x)
