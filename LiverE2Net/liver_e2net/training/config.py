"""TrainConfig: every choice that shapes a training run, frozen and stored in the checkpoint metadata.

Runtime choices that do not change the result (device, data-loader workers, progress mode, cache folder)
are not part of it, so a run resumed on another machine keeps its config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import _from_dict
from ..errors import UserInputError
from ..protocol import PRECISIONS
from .synthetic_tumors import SyntheticTumorConfig
from .targets import EDGE_TARGETS
from .validation_tumors import VALIDATION_TUMORS

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}


@dataclass(frozen=True)
class AugmentConfig:
    """CT augmentation. Flips are off by default: the liver lies on the patient's right, so a mirrored slice
    shows anatomy the network never meets at inference; small rotations, scalings and shifts do occur."""

    enabled: bool = True
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.05  # fraction of the image size, per axis
    flip_lr: bool = False
    hu_shift: float = 20.0  # HU, added before windowing (scanner calibration, contrast timing)
    hu_scale: tuple[float, float] = (0.9, 1.1)  # contrast, about the HU window centre
    noise_probability: float = 0.5
    noise_std: float = 0.03  # in the normalised [-1, 1] units: 0.03 is ~5 HU for the default window
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # pixels at network resolution (softer kernels)
    sharpen_probability: float = 0.0  # unsharp masking (sharper kernels)
    sharpen_amount: tuple[float, float] = (0.3, 1.0)
    # Acquisition the training CTs lack (0 keeps the behaviour of runs made before these existed):
    phase_probability: float = 0.0  # share of samples moved to an arterial/delayed/unenhanced look
    thick_slice_probability: float = 0.0  # share of samples rebuilt as thick-slice reconstructions
    thick_slice_mm: tuple[float, float] = (2.0, 5.0)
    fov_probability: float = 0.0  # share of samples cut to a reconstruction circle with scanner padding



# What `train` uses for a new run: every sample may look like another hospital's CT.
ACQUISITION_AUGMENTATION = AugmentConfig(
    phase_probability=0.5, thick_slice_probability=0.3, fov_probability=0.15, sharpen_probability=0.15
)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "lite"  # ModelConfig name; the full ModelConfig is stored in the checkpoint itself
    stages: tuple[int, ...] = (1, 2)
    epochs: int = 100  # cap per stage; the plateau schedule usually stops earlier
    steps_per_epoch: int | None = None  # None: one pass over the training slices
    batch_size: int = 8  # per process
    optimizer: str = "sgd"
    lr: float = DEFAULT_LR["sgd"]
    momentum: float = 0.9
    weight_decay: float = 1e-4
    patience: int = 5  # epochs without a lower validation loss before the learning rate is divided by 10
    lr_drops: int = 2  # paper: stop once the loss plateaus again after two drops
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.2
    synthetic_tumors: float = 0.0  # probability per sample of stage 2 (and of a 3D stage 1: large tumors)
    # Weights of the synthetic size classes tiny 3-5, small 5-10, medium 10-25, large 25-80 mm (Hu et al.'s
    # defaults); a short training budget learns the larger ones first.
    synthetic_size_weights: tuple[float, ...] = SyntheticTumorConfig.size_class_weights
    # Weights of the kinds (TUMOR_KINDS order). Networks trained at the generator's defaults find 3 of 8 painted
    # 10-20 mm hyperdense tumors on case02 (the faint +20-27 HU ones never) against 8 of 8 hypodense ones.
    synthetic_kind_weights: tuple[float, ...] = SyntheticTumorConfig.kind_weights
    # Share of samples whose synthetic tumors may reach the liver border (a capsule-touching tumor is common in
    # real livers; the generator keeps a 3 mm margin otherwise).
    synthetic_border_probability: float = 0.0
    # Share of stage 2's synthetic tumors that are copies of the training cases' real tumors (real_tumors.py):
    # scaled, turned and contrast-scaled, painted like the others. 0 = none, as runs made before it.
    real_tumor_paste: float = 0.0
    tumor_pos_weight: float = 1.0  # weight of tumor pixels in the BCE terms; 1 = the paper's loss
    lesion_loss_weight: float = 0.0  # weight of the lesion-wise IoU loss (training/losses.py); 0 = the paper's loss
    # Weight of a stage-2 loss that keeps the liver channel at the --init network's (learning without forgetting):
    # every fine-tune for tumors cost the held-out liver 0.001-0.002 Dice. 0 = off; the teacher is saved in the state.
    liver_distillation: float = 0.0
    # Validation cases without tumors get synthetic ones. True (every new run): the same tumors whatever --seed and
    # --synthetic-size-weights, so runs on the same validation cases are scored alike and can be compared; False:
    # drawn with the run's seed and size weights, as runs made before this field existed did.
    fixed_validation_tumors: bool = False
    # With fixed_validation_tumors: True (every new run) paints VALIDATION_TUMORS, 2-5 tumors of every size and kind,
    # border and bulging ones too; False: the generator's defaults, on a short CT mostly one or two small tumors, which
    # left best.pt blind to the large and capsule-touching tumors that make up real tumor burden.
    validation_tumor_range: bool = False
    seed: int = 0
    stage1_crop_native: int = 448  # paper: 448 x 448 crops of 512 x 512 slices, converted to the stage-1 grid
    # A 3D stage 1's crops (z, y, x) in mm: the liver's whole height and an abdomen's width.
    stage1_volume_crop_mm: tuple[float, float, float] = (192.0, 384.0, 384.0)
    stage2_pad_native: tuple[int, int] = (10, 60)  # paper: the liver box padded by 10-60 pixels per side
    stage2_extra_slices: int = 2  # slices above and below the liver box also used in stage 2
    tumor_slice_fraction: float = 0.5  # share of a tumor case's stage-2 samples drawn from tumor slices
    ema_decay: float = 0.0  # weight average for validation and best.pt; 0 validates the last step's weights
    bn_calibration_samples: int = 64  # un-augmented samples that recompute BatchNorm statistics per epoch
    # Edge-branch target (paper Table 3): "distance", the edge-distance map, or "plain", the binary edge.
    edge_target: str = "distance"
    # "auto": fp16 autocast on CUDA, bf16 on CPUs with native bf16 (devices.cpu_has_native_bf16; 1.4-2x faster
    # steps measured on a Xeon with AMX), fp32 elsewhere; "fp32": full precision everywhere. A run resumed on
    # another machine takes that machine's precision.
    precision: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        checks = [
            (set(self.stages) <= {1, 2} and len(self.stages) > 0, f"--stages {self.stages}: use 1, 2 or 1,2"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (
                self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                f"--steps-per-epoch {self.steps_per_epoch}: must be >= 1",
            ),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (
                self.optimizer in DEFAULT_LR,
                f"--optimizer {self.optimizer!r}: use one of {sorted(DEFAULT_LR)}",
            ),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (self.patience >= 1, f"patience {self.patience}: must be >= 1"),
            (0 < self.val_fraction < 1, f"--val-fraction {self.val_fraction}: must be between 0 and 1"),
            (
                0 <= self.synthetic_tumors <= 1,
                f"--synthetic-tumors {self.synthetic_tumors}: a probability in [0, 1]",
            ),
            (0 <= self.tumor_slice_fraction <= 1, "tumor_slice_fraction must be in [0, 1]"),
            (
                0 <= self.synthetic_border_probability <= 1,
                f"--synthetic-border-probability {self.synthetic_border_probability}: a probability in [0, 1]",
            ),
            (
                0 <= self.real_tumor_paste <= 1,
                f"--real-tumor-paste {self.real_tumor_paste}: a share in [0, 1] (0 = off)",
            ),
            (self.tumor_pos_weight > 0, f"--tumor-pos-weight {self.tumor_pos_weight}: must be > 0"),
            (
                math.isfinite(self.lesion_loss_weight) and self.lesion_loss_weight >= 0,
                f"--lesion-loss-weight {self.lesion_loss_weight}: use 0 (off) or a weight > 0, e.g. 1",
            ),
            (
                math.isfinite(self.liver_distillation) and self.liver_distillation >= 0,
                f"--liver-distillation {self.liver_distillation}: use 0 (off) or a weight > 0, e.g. 1",
            ),
            (self.bn_calibration_samples >= 0, "bn_calibration_samples must be >= 0"),
            (0 <= self.ema_decay < 1, f"--ema-decay {self.ema_decay}: use 0 (off) or a value in (0, 1), e.g. 0.99"),
            (
                self.edge_target in EDGE_TARGETS,
                f"--edge-target {self.edge_target!r}: use one of {', '.join(EDGE_TARGETS)}",
            ),
            (self.precision in PRECISIONS, f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}"),
            (
                0 <= self.stage2_pad_native[0] <= self.stage2_pad_native[1],
                "stage2_pad_native must be (low, high)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        self.synthetic_tumor_config()  # checks --synthetic-size-weights and --synthetic-kind-weights

    def synthetic_tumor_config(self) -> SyntheticTumorConfig:
        return SyntheticTumorConfig(
            size_class_weights=tuple(self.synthetic_size_weights),
            kind_weights=tuple(self.synthetic_kind_weights),
            real_tumor_probability=self.real_tumor_paste,
        )

    def validation_tumors(self) -> tuple[int, SyntheticTumorConfig]:
        """(seed, generator config) of the validation cases' synthetic tumors."""
        if self.fixed_validation_tumors:
            return 0, VALIDATION_TUMORS if self.validation_tumor_range else SyntheticTumorConfig()
        return self.seed, self.synthetic_tumor_config()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)
