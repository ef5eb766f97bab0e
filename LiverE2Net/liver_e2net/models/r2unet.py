"""R2UNet (paper Fig. 2a): Res2Net features, each compressed to C channels, a UNet-like C-channel decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetworkConfig
from .res2net import Res2Net, conv_bn_relu


def upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class Compress(nn.Module):
    """1x1 then 3x3 conv per feature level: every Fi becomes `channels` wide (paper: 32)."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(conv_bn_relu(c, channels, 1), conv_bn_relu(channels, channels, 3))
            for c in in_channels
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [level(f) for level, f in zip(self.levels, features)]


class Decoder(nn.Module):
    """UNet-like: from the coarsest level, upsample, concatenate the skip, two 3x3 convs. Returns stride-2 features."""

    def __init__(self, channels: int, levels: int = 5):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(conv_bn_relu(2 * channels, channels), conv_bn_relu(channels, channels))
            for _ in range(levels - 1)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(torch.cat([upsample_to(x, skip), skip], dim=1))
        return x  # (B, C, H/2, W/2)


class Head(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        # Logits are predicted at stride 2 and upsampled: cheaper than decoding at full size.
        return F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


class Branch(nn.Module):
    """Encoder + compression: the per-branch part shared by R2UNet and both E2Net branches."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.encoder = Res2Net(config.backbone, config.in_channels)
        self.compress = Compress(self.encoder.channels, config.decoder_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.compress(self.encoder(x))


class R2UNet(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.branch = Branch(config)
        self.decoder = Decoder(config.decoder_channels)
        self.head = Head(config.decoder_channels, config.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.branch(x)), x.shape[-2:])  # (B, out, H, W) logits

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction logits (every network has this; inference calls it)."""
        return self(x)
