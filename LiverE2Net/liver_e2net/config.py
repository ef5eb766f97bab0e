"""Configs as frozen dataclasses with a JSON round trip; every checkpoint stores them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UserInputError

LABELS = {"background": 0, "liver": 1, "tumor": 2}
CONTEXT_SLICES = (1, 3, 5)  # adjacent axial slices given to both networks as input channels


@dataclass(frozen=True)
class BackboneConfig:
    """Res2Net: bottle2neck blocks, `scale` groups of `base_width` channels per group at the first stage."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    base_width: int = 26
    scale: int = 4
    stem_channels: int = 64  # the deep stem is three 3x3 convs: stem/2, stem/2, stem
    planes: tuple[int, ...] = (64, 128, 256, 512)  # block outputs are planes * 4


@dataclass(frozen=True)
class NetworkConfig:
    """One network: `r2unet` (single branch), `e2net` (segmentation + edge branch + DCFF + fusion) or `unet3d`
    (a plain 3D UNet over the whole CT at stage1_pixel_mm voxels: a stage 1 that sees the liver at once)."""

    arch: Literal["r2unet", "e2net", "unet3d"] = "r2unet"
    out_channels: int = 1
    in_channels: int = 1
    decoder_channels: int = 32
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Ablation switches for E2Net (paper Table 3): without DCFF the branches meet only at the fusion head.
    dcff: bool = True
    widths: tuple[int, ...] = (8, 16, 32, 64, 128)  # unet3d only: channels per level, each level halves the grid

    @property
    def volumetric(self) -> bool:
        """True for a 3D network: it takes the whole CT (B, 1, D, H, W), not slices with context channels."""
        return self.arch == "unet3d"

    @property
    def volume_stride(self) -> int:
        """unet3d: each level halves the grid, so inputs must be multiples of this."""
        return 2 ** (len(self.widths) - 1)


@dataclass(frozen=True)
class PreprocessingConfig:
    hu_window: tuple[float, float] = (-100.0, 240.0)
    stage1_pixel_mm: float = 2.0  # stage 1 needs only a coarse liver: slices (a 3D stage 1: voxels) of this size
    stage2_size: int = 256  # liver crops are resized to stage2_size x stage2_size
    box_margin_mm: float = 15.0  # margin added around the stage-1 liver box (in-plane)
    box_margin_slices: int = 2  # extra slices above and below the stage-1 liver
    # ... and at least this many mm (0: slices only). A 2D stage 1 ends its liver short: on case06, held out, 2.7 %
    # of the liver lay beyond 2 slices of 1.5 mm, 0.5 % beyond 20 mm (liver Dice 0.915 -> 0.919).
    box_margin_z_mm: float = 0.0
    # A 3D stage 1 only: stage 2's liver and tumors are kept within this distance of its coarse liver (None: off).
    liver_gate_mm: float | None = None
    # 2.5D input (H-DenseUNet's 2D part, the LiTS-2017 winner): slices z-k..z+k as channels, k = n // 2.
    context_slices: int = 1
    # Stage-2 input scales of --tta multiscale (the panel's Best). Each scale grows the liver a little (the nets
    # train at 1.0). One scale, (1.0,), makes Best equal Fast: for a model whose fusion did not help held out.
    tta_scales: tuple[float, ...] = (0.875, 1.0)

    @property
    def best_is_fast(self) -> bool:
        """One TTA scale, 1: --tta multiscale runs the single pass Fast runs."""
        return self.tta_scales == (1.0,)

    def z_margin(self, slice_mm: float) -> int:
        """Slices added above and below the stage-1 liver on a CT of `slice_mm` slices."""
        return max(self.box_margin_slices, math.ceil(self.box_margin_z_mm / slice_mm - 1e-6))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lite"
    stage1: NetworkConfig = field(default_factory=NetworkConfig)
    stage2: NetworkConfig = field(default_factory=lambda: NetworkConfig(arch="e2net", out_channels=2))
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)

    def __post_init__(self) -> None:
        context = self.preprocessing.context_slices
        if context not in CONTEXT_SLICES:
            raise UserInputError(
                f"context_slices {context!r}: use one of {', '.join(map(str, CONTEXT_SLICES))} "
                "(the slice alone, or with 1 or 2 neighbours on each side)"
            )
        for stage in ("stage1", "stage2"):
            network = getattr(self, stage)
            if network.volumetric:
                if network.in_channels != 1 or stage != "stage1":
                    raise UserInputError(f"{stage}: a 3D network serves stage 1 only, with one input channel")
                continue
            channels = network.in_channels
            if channels != context:
                raise UserInputError(
                    f"{stage} in_channels {channels} differs from context_slices {context}: each context slice "
                    "is one input channel (build the config with with_context_slices)"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


def _from_dict(cls, data: dict[str, Any]):
    """Rebuild a (nested) frozen dataclass, refusing unknown keys so typos never pass silently."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def paper_config() -> ModelConfig:
    """As published: Res2Net-50 (26w x 4s) R2UNet in stage 1, E2Net in stage 2, 32-channel decoders."""
    return ModelConfig(name="paper")


def lite_config() -> ModelConfig:
    """Same code, a narrow and shallow Res2Net: fast enough for a laptop CPU."""
    small = BackboneConfig(
        layers=(1, 1, 2, 1), base_width=6, scale=4, stem_channels=16, planes=(16, 32, 64, 128)
    )
    return _narrow("lite", small, stage2_decoder=16)


def base_config() -> ModelConfig:
    """Between lite and paper (twice lite's width, deeper): the capacity step a GPU run would try next."""
    middle = BackboneConfig(
        layers=(2, 2, 3, 2), base_width=12, scale=4, stem_channels=32, planes=(32, 64, 128, 256)
    )
    return _narrow("base", middle, stage2_decoder=24)


def _narrow(name: str, backbone: BackboneConfig, stage2_decoder: int) -> ModelConfig:
    """Both stages on one smaller backbone, stage 1 with a 16-channel decoder."""
    stage1 = NetworkConfig(arch="r2unet", out_channels=1, decoder_channels=16, backbone=backbone)
    stage2 = NetworkConfig(arch="e2net", out_channels=2, decoder_channels=stage2_decoder, backbone=backbone)
    return ModelConfig(name=name, stage1=stage1, stage2=stage2, preprocessing=PreprocessingConfig())


def with_context_slices(config: ModelConfig, context_slices: int) -> ModelConfig:
    """`config` fed `context_slices` adjacent slices: the preprocessing and both networks' input channels."""
    if context_slices not in CONTEXT_SLICES:
        raise UserInputError(
            f"--context-slices {context_slices!r}: use one of {', '.join(map(str, CONTEXT_SLICES))}"
        )
    stage1 = config.stage1 if config.stage1.volumetric else dataclasses.replace(config.stage1, in_channels=context_slices)
    return dataclasses.replace(
        config,
        stage1=stage1,
        stage2=dataclasses.replace(config.stage2, in_channels=context_slices),
        preprocessing=dataclasses.replace(config.preprocessing, context_slices=context_slices),
    )


STAGE1_NETS = ("2d", "3d")
STAGE1_VOXEL_MM = 4.0  # a 3D stage 1's voxel: a 400 x 400 x 300 mm abdomen is 100 x 100 x 75 voxels
# Chosen on case06 held out (liver Dice 0.895 ungated, 0.897 at 20 mm, 0.901 at 10 mm; README, Results).
STAGE1_LIVER_GATE_MM = 10.0


def with_stage1_net(config: ModelConfig, net: str) -> ModelConfig:
    """`config` with its 2D slice-wise stage 1 (as published) or a 3D UNet stage 1 on STAGE1_VOXEL_MM voxels,
    which sees the whole liver at once: it cannot drop the liver's tip slice by slice or take the heart above
    the dome for liver, the errors of the 2D stage 1 on CTs of other hospitals."""
    if net not in STAGE1_NETS:
        raise UserInputError(f"--stage1-net {net!r}: use one of {', '.join(STAGE1_NETS)}")
    if (net == "3d") == config.stage1.volumetric:
        return config
    if net == "2d":
        default = get_config(config.name)
        stage1 = dataclasses.replace(default.stage1, in_channels=config.preprocessing.context_slices)
        pixel_mm, gate_mm = default.preprocessing.stage1_pixel_mm, None
    else:
        stage1 = NetworkConfig(arch="unet3d", out_channels=1, in_channels=1)
        pixel_mm, gate_mm = STAGE1_VOXEL_MM, STAGE1_LIVER_GATE_MM
    preprocessing = dataclasses.replace(config.preprocessing, stage1_pixel_mm=pixel_mm, liver_gate_mm=gate_mm)
    return dataclasses.replace(config, stage1=stage1, preprocessing=preprocessing)


CONFIGS = {"paper": paper_config, "base": base_config, "lite": lite_config}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}") from None
