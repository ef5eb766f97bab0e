"""Res2Net backbone (Gao et al., TPAMI 2019): bottle2neck blocks, features F1..F5 at strides 2..32.

Written here rather than taken from timm: timm imports torchvision, whose registry wheel does not load beside
the CPU torch 2.13.0 we pin (see ../shared/design/PERFORMANCE.md). Layout and parameter count follow timm's
`res2net50_26w_4s` (7x7 stem, avg-pool shortcut inside the first block of a stage) so that the paper config
has the published 23.6 M feature parameters. The encoder contract is timm's `features_only`: `forward`
returns a list of feature maps and `feature_info` lists their channels and strides.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import BackboneConfig


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Bottle2neck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, base_width: int, scale: int):
        super().__init__()
        self.width = int(math.floor(planes * (base_width / 64.0)))
        self.scale = scale
        out_channels = planes * self.expansion
        self.is_first = stride > 1 or in_channels != out_channels
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, self.width * scale, 1, bias=False),
            nn.BatchNorm2d(self.width * scale),
            nn.ReLU(inplace=True),
        )
        self.convs = nn.ModuleList(
            conv_bn_relu(self.width, self.width, 3, stride) for _ in range(max(1, scale - 1))
        )
        # The last split skips the 3x3 conv; in a stage's first block it is pooled to the new stride.
        self.pool = nn.AvgPool2d(3, stride, padding=1) if self.is_first and scale > 1 else None
        self.conv3 = nn.Sequential(
            nn.Conv2d(self.width * scale, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.downsample = None
        if self.is_first:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        splits = torch.split(self.conv1(x), self.width, dim=1)
        outputs = []
        hierarchical = splits[0]
        for index, conv in enumerate(self.convs):
            # Each split also sees the previous split's output: the "hierarchical residual" of Res2Net.
            hierarchical = splits[index] if index == 0 or self.is_first else hierarchical + splits[index]
            hierarchical = conv(hierarchical)
            outputs.append(hierarchical)
        if self.scale > 1:
            outputs.append(self.pool(splits[-1]) if self.pool is not None else splits[-1])
        out = self.conv3(torch.cat(outputs, dim=1))
        return self.relu(out + shortcut)


class Res2Net(nn.Module):
    """Encoder only: returns [F1 (stride 2), F2 (4), F3 (8), F4 (16), F5 (32)]."""

    def __init__(self, config: BackboneConfig, in_channels: int = 1):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, config.stem_channels, kernel_size=7, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        channels = config.stem_channels
        self.feature_info = [{"num_chs": channels, "reduction": 2}]
        stages = []
        for stage_index, (blocks, planes) in enumerate(zip(config.layers, config.planes)):
            stride = 1 if stage_index == 0 else 2
            stage = []
            for block_index in range(blocks):
                stage.append(
                    Bottle2neck(
                        channels, planes, stride if block_index == 0 else 1, config.base_width, config.scale
                    )
                )
                channels = planes * Bottle2neck.expansion
            stages.append(nn.Sequential(*stage))
            self.feature_info.append({"num_chs": channels, "reduction": 4 * 2**stage_index})
        self.stages = nn.ModuleList(stages)

    @property
    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        x = self.maxpool(features[0])
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
