"""E2Net (Tang et al., MICCAI 2020): segmentation branch + edge branch + deep cross feature fusion (DCFF).

Both branches have R2UNet's shape with their own weights. DCFF refines each scale i of one branch with every
equal-or-coarser scale j >= i of the other branch (paper Fig. 2d): the own feature is downsampled to scale j and
joined with the other branch's F^j (concatenation for the segmentation branch, element-wise product for the edge
branch), then a decoder-like path of joins, convs and upsampling runs from the coarsest scale back to i, and the
result is added to the own feature. The decoded features of both branches are concatenated by the fusion head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetworkConfig
from .r2unet import Branch, Decoder, Head, upsample_to
from .res2net import conv_bn_relu


class E2NetOutput(NamedTuple):
    s1: torch.Tensor  # (B, out, H, W) segmentation-branch logits
    edge: torch.Tensor  # (B, out, H, W) edge-distance logits
    s2: torch.Tensor  # (B, out, H, W) fused logits: the prediction


class CrossRefine(nn.Module):
    """Refines scale `level` of one branch with scales level..L-1 of the other (one DCFF path)."""

    def __init__(self, channels: int, level: int, levels: int, join: str):
        super().__init__()
        self.level = level
        self.join = join
        width = 2 * channels if join == "concat" else channels
        self.mix = nn.ModuleList(conv_bn_relu(width, channels) for _ in range(level, levels))
        self.decode = nn.ModuleList(conv_bn_relu(width, channels) for _ in range(level, levels - 1))

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1) if self.join == "concat" else a * b

    def forward(self, own: list[torch.Tensor], other: list[torch.Tensor]) -> torch.Tensor:
        feature = own[self.level]
        mixed = []
        for conv, other_feature in zip(self.mix, other[self.level :]):
            down = (
                feature
                if other_feature.shape[-2:] == feature.shape[-2:]
                else F.adaptive_avg_pool2d(feature, other_feature.shape[-2:])
            )
            mixed.append(conv(self._join(down, other_feature)))
        x = mixed[-1]
        for conv, finer in zip(reversed(self.decode), reversed(mixed[:-1])):
            x = conv(self._join(upsample_to(x, finer), finer))
        return feature + x


class DCFF(nn.Module):
    def __init__(self, channels: int, levels: int = 5):
        super().__init__()
        self.refine_segmentation = nn.ModuleList(
            CrossRefine(channels, i, levels, "concat") for i in range(levels)
        )
        self.refine_edge = nn.ModuleList(CrossRefine(channels, i, levels, "multiply") for i in range(levels))

    def forward(
        self, seg: list[torch.Tensor], edge: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        refined_seg = [refine(seg, edge) for refine in self.refine_segmentation]
        refined_edge = [refine(edge, seg) for refine in self.refine_edge]
        return refined_seg, refined_edge


class E2Net(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        channels = config.decoder_channels
        self.seg_branch = Branch(config)
        self.edge_branch = Branch(config)
        self.dcff = DCFF(channels) if config.dcff else None
        self.seg_decoder = Decoder(channels)
        self.edge_decoder = Decoder(channels)
        self.seg_head = Head(channels, config.out_channels)
        self.edge_head = Head(channels, config.out_channels)
        self.fusion = nn.Sequential(conv_bn_relu(2 * channels, channels))
        self.fusion_head = Head(channels, config.out_channels)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seg, edge = self.seg_branch(x), self.edge_branch(x)
        if self.dcff is not None:
            seg, edge = self.dcff(seg, edge)
        seg_decoded, edge_decoded = self.seg_decoder(seg), self.edge_decoder(edge)
        return seg_decoded, edge_decoded, self.fusion(torch.cat([seg_decoded, edge_decoded], dim=1))

    def forward(self, x: torch.Tensor) -> E2NetOutput:
        size = x.shape[-2:]
        seg_decoded, edge_decoded, fused = self._decode(x)
        return E2NetOutput(
            self.seg_head(seg_decoded, size),
            self.edge_head(edge_decoded, size),
            self.fusion_head(fused, size),
        )

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction logits, the fused s2 alone: the side heads (s1, edge) feed only training's losses, and
        their full-size upsampling is ~10 % of an inference forward on the CPU."""
        return self.fusion_head(self._decode(x)[2], x.shape[-2:])
