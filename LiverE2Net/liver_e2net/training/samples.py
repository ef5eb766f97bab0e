"""Training samples of both stages, made from cached cases exactly as inference makes its network inputs.

Sample `i` of epoch `e` depends only on (seed, stage, e, i): its numpy Generator picks the slice and drives
every augmentation, so results do not depend on the number of workers or processes, and a run resumed in the
middle of an epoch sees the very samples it would have seen.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config import ModelConfig
from ..errors import UserInputError
from ..preprocessing import context_stack, downsample_volume, normalize_hu, resize, stage1_grid, stage1_size
from .augment import (
    PHASES,
    adjust_hu,
    limit_field_of_view,
    noise_and_blur,
    random_affine,
    random_affine_3d,
    simulate_phase,
    thick_slice_stack,
    warp,
)
from .cache import CachedCase
from .config import TrainConfig
from .real_tumors import MIN_DONOR_ML, donors_from_case
from .synthetic_tumors import insert_tumors, insert_tumors_slab
from .targets import edge_targets

log = logging.getLogger("liver_e2net.training")

STRIDE = 32  # the networks downsample 32 times
STAGE1_SIZE_WEIGHTS = (0.0, 0.0, 0.3, 0.7)  # a 3D stage 1's synthetic tumors: 10-80 mm (4 mm voxels)
SYNTHETIC_SLAB_HALF = 2  # slices either side of the sample's slice given to the 3D tumor painter
TRAINING, CALIBRATION = 0, 1  # independent random streams of samples


class EpochSampler(Sampler[int]):
    """This process's share of one epoch's sample indices: global step k uses indices [k B W, (k+1) B W)."""

    def __init__(self, steps: int, batch_size: int, rank: int = 0, world_size: int = 1, start_step: int = 0):
        self.indices = range(
            start_step * batch_size * world_size + rank, steps * batch_size * world_size, world_size
        )

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Samples(Dataset):
    stage = 0

    def __init__(
        self,
        cases: list[CachedCase],
        model_config: ModelConfig,
        train_config: TrainConfig,
        stream: int = TRAINING,  # TRAINING or CALIBRATION
    ):
        self.cases = cases
        self.model_config = model_config
        self.prep = model_config.preprocessing
        self.config = train_config
        self.stream = stream
        self.epoch = 0  # set by the trainer before each epoch's iterator is created

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, self.stage, self.stream, self.epoch, index])

    def calibration(self) -> _Samples:
        """The same samples without augmentation, drawn from their own stream: for BatchNorm statistics."""
        augment = dataclasses.replace(self.config.augment, enabled=False)
        config = dataclasses.replace(self.config, augment=augment)
        return type(self)(self.cases, self.model_config, config, CALIBRATION)

    def _image(
        self, volume_zyx: np.ndarray, label_zyx: np.ndarray, z: int, spacing_z: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Slice z of a [z, y, x] HU volume with its context neighbours, as inference stacks them -> (K, y, x)
        normalised float32, augmented in HU alike on all K slices: slice thickness and contrast phase first (the acquisition the training CTs lack), then scanner calibration."""
        augment, context = self.config.augment, self.prep.context_slices
        if augment.enabled and rng.random() < augment.thick_slice_probability:
            thickness = rng.uniform(*augment.thick_slice_mm)
            hu = thick_slice_stack(volume_zyx, z, context, spacing_z, thickness)
        else:
            hu = context_stack(volume_zyx, [z], context)[0]
        if augment.enabled and rng.random() < augment.phase_probability:
            label = context_stack(label_zyx, [z], context)[0]
            hu = simulate_phase(hu, label, str(rng.choice(PHASES[1:])), rng)
        return self._hu(hu, rng)

    def _hu(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HU (augmented) -> normalised float32, as inference's normalize_hu."""
        if self.config.augment.enabled:
            hu = adjust_hu(hu, rng, self.config.augment, self.prep.hu_window)
        return normalize_hu(hu, self.prep.hu_window)

    def _geometry_and_noise(
        self, image: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (K, H, W), float masks (C, H, W) -> augmented; masks stay soft until the caller thresholds."""
        if not self.config.augment.enabled:
            return image, masks
        image, masks = warp(image, masks, random_affine(rng, self.config.augment, *image.shape[-2:]))
        return noise_and_blur(image, rng, self.config.augment), masks


class Stage1Samples(_Samples):
    """Random axial slices of whole CTs on the stage-1 grid, randomly cropped: image (K, P, P) of K context
    slices, liver (1, P, P).

    The paper crops 448 x 448 of 512 x 512 native slices; here the crop covers the same field of view on the
    stage-1 grid (rounded to the network stride), or the whole slice when that is smaller, padded with air to
    the largest crop of the training set so samples of different cases batch together.
    """

    stage = 1

    def __init__(
        self,
        cases: list[CachedCase],
        model_config: ModelConfig,
        train_config: TrainConfig,
        stream: int = TRAINING,
    ):
        super().__init__(cases, model_config, train_config, stream)
        self.grid, self.crop = [], []
        for case in cases:
            spacing_yx = (case.spacing[1], case.spacing[0])
            grid = stage1_size(case.shape[1:], spacing_yx, self.prep.stage1_pixel_mm)
            field = [
                _round_stride(train_config.stage1_crop_native * s / self.prep.stage1_pixel_mm)
                for s in spacing_yx
            ]
            self.grid.append(grid)
            self.crop.append(tuple(min(g, f) for g, f in zip(grid, field)))
        self.size = tuple(max(crop[axis] for crop in self.crop) for axis in (0, 1))  # (P_h, P_w)
        self.first_slice = np.cumsum([0] + [case.shape[0] for case in cases])

    def __len__(self) -> int:
        return int(self.first_slice[-1])  # all slices of all training cases

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        flat = int(rng.integers(len(self)))
        case_index = int(np.searchsorted(self.first_slice, flat, side="right") - 1)
        case, z = self.cases[case_index], flat - int(self.first_slice[case_index])
        image = self._image(case.ct, case.label, z, case.spacing[2], rng)  # (K, H, W)
        liver = (case.label[z] >= 1).astype(np.float32)
        augment = self.config.augment
        if augment.enabled and rng.random() < augment.fov_probability:  # liver outside the circle is not seen
            inside = limit_field_of_view(np.ones_like(liver)[None], rng, padding_values=(0.0,))[0]
            image = np.where(inside[None] > 0, image, np.float32(-1.0))  # scanner padding, after the window
            liver = liver * inside
        both = np.concatenate([image, liver[None]])
        both = resize(torch.from_numpy(both)[None], self.grid[case_index])[0]  # (K + 1, h, w)
        image, liver = self._geometry_and_noise(both[:-1], both[-1:], rng)
        (crop_h, crop_w), (grid_h, grid_w) = self.crop[case_index], self.grid[case_index]
        y0, x0 = int(rng.integers(grid_h - crop_h + 1)), int(rng.integers(grid_w - crop_w + 1))
        image, liver = (t[:, y0 : y0 + crop_h, x0 : x0 + crop_w] for t in (image, liver))
        return _pad(image, self.size, -1.0), _pad((liver > 0.5).float(), self.size, 0.0)


class Stage1Volumes(_Samples):
    """A 3D stage 1's samples: whole CTs on its voxel grid (stage1_pixel_mm), augmented in 3D (contrast phase,
    scanner HU, field of view, rotation, tilt, zoom, shift, noise, kernel) and cropped to stage1_volume_crop_mm,
    most crops centred near the liver: image (1, D, H, W), liver (1, D, H, W).

    Cases less than MIN_DEPTH_MM deep (a few-slice fixture) are left out: a 3D network learns nothing from them.
    """

    stage = 1
    MIN_DEPTH_MM = 40.0
    LIVER_CENTRED = 0.8  # share of crops centred on a liver voxel; the rest anywhere in the volume

    def __init__(
        self,
        cases: list[CachedCase],
        model_config: ModelConfig,
        train_config: TrainConfig,
        stream: int = TRAINING,
    ):
        voxel_mm = model_config.preprocessing.stage1_pixel_mm
        deep = [c for c in cases if c.shape[0] * c.spacing[2] >= self.MIN_DEPTH_MM]
        for case in [c for c in cases if c.shape[0] * c.spacing[2] < self.MIN_DEPTH_MM]:
            log.info("3D stage 1: %s left out (%.0f mm deep, < %.0f mm)", case.name,
                     case.shape[0] * case.spacing[2], self.MIN_DEPTH_MM)  # fmt: skip
        if not deep:
            raise UserInputError(
                f"a 3D stage 1 needs training CTs at least {self.MIN_DEPTH_MM:.0f} mm deep; "
                f"{', '.join(c.name for c in cases)} are all thinner: add whole-liver CTs or use --stage1-net 2d"
            )
        super().__init__(deep, model_config, train_config, stream)
        stride = model_config.stage1.volume_stride
        self.size = tuple(
            max(stride, int(round(mm / voxel_mm / stride)) * stride) for mm in train_config.stage1_volume_crop_mm
        )
        self.volumes = [_volume_on_grid(case, voxel_mm) for case in deep]
        self.voxel_mm = voxel_mm
        # Large tumors, at the capsule too: the coarse liver must hold a liver's tumors, or the box and the gate
        # cut them off (the training CTs have one real tumor among them).
        self.tumor_config = dataclasses.replace(
            train_config.synthetic_tumor_config(), size_class_weights=STAGE1_SIZE_WEIGHTS, allow_border=True
        )

    def __len__(self) -> int:
        return sum(hu.shape[0] for hu, _ in self.volumes)  # an epoch of one pass: as many samples as z voxels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        hu, label = self.volumes[int(rng.integers(len(self.volumes)))]
        if self.config.synthetic_tumors > 0 and rng.random() < self.config.synthetic_tumors:
            hu, label = with_large_tumors(hu, label, self.voxel_mm, rng, self.tumor_config)
        augment = self.config.augment
        if augment.enabled and rng.random() < augment.phase_probability:
            hu = simulate_phase(hu, label, str(rng.choice(PHASES[1:])), rng)
        image, liver = self._hu(hu, rng), (label >= 1).astype(np.float32)
        if augment.enabled and rng.random() < augment.fov_probability:  # liver outside the circle is not seen
            inside = limit_field_of_view(np.ones_like(liver[:1]), rng, padding_values=(0.0,))
            image, liver = np.where(inside > 0, image, np.float32(-1.0)), liver * inside
        image, liver = torch.from_numpy(np.ascontiguousarray(image))[None], torch.from_numpy(liver)[None]
        if augment.enabled:
            image, liver = warp(image, liver, random_affine_3d(rng, augment, *image.shape[1:]))
            image = noise_and_blur(image[0], rng, augment)[None]  # in-plane blur and noise of each slice
        origin = self._crop_origin(liver[0] > 0.5, rng)
        window = tuple(slice(o, o + s) for o, s in zip(origin, self.size))
        image, liver = image[(slice(None), *window)], liver[(slice(None), *window)]
        return _pad(image, self.size, -1.0), _pad((liver > 0.5).float(), self.size, 0.0)

    def _crop_origin(self, liver: torch.Tensor, rng: np.random.Generator) -> tuple[int, ...]:
        """Corner of a crop of self.size in a volume of liver's shape: centred on a random liver voxel (with a
        +-quarter-crop jitter) for LIVER_CENTRED of the samples, else anywhere; 0 on axes shorter than the crop."""
        shape = liver.shape
        voxels = torch.nonzero(liver)
        if len(voxels) and rng.random() < self.LIVER_CENTRED:
            centre = voxels[int(rng.integers(len(voxels)))].numpy()
            wanted = centre - np.array(self.size) // 2 + rng.integers(-1, 2, 3) * np.array(self.size) // 4
        else:
            wanted = np.array([rng.integers(max(1, n - s + 1)) for n, s in zip(shape, self.size)])
        return tuple(int(np.clip(w, 0, max(0, n - s))) for w, n, s in zip(wanted, shape, self.size))


def with_large_tumors(hu: np.ndarray, label: np.ndarray, voxel_mm: float, rng: np.random.Generator,
                      config) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(HU, label) on a 3D stage 1's isotropic grid with synthetic tumors painted in (labelled 2, in the liver or
    bulging from it), or as given where the liver has no room for one."""
    try:
        hu, label, _ = insert_tumors(hu, label, (voxel_mm,) * 3, rng, config)
    except UserInputError:
        pass
    return hu, label


_VOLUMES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _volume_on_grid(case: CachedCase, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, label uint8 {0, 1, 2}) of a case on a 3D stage 1's grid, made as inference makes its input
    (area means); kept per process, as the training and calibration samples of a run share them."""
    key = (str(case.folder), case.key, voxel_mm)
    if key not in _VOLUMES:
        grid = stage1_grid(case.shape, case.spacing, voxel_mm)
        hu = downsample_volume(case.ct, grid).numpy()
        liver = downsample_volume(case.label >= 1, grid).numpy() > 0.5
        tumor = downsample_volume(case.label == 2, grid).numpy() > 0.5
        _VOLUMES[key] = hu, (liver.astype(np.uint8) + (tumor & liver)).astype(np.uint8)
    return _VOLUMES[key]


def samples_of_stage(stage: int, model_config: ModelConfig) -> type[_Samples]:
    """The training-sample set of `stage` for this model: slices, or whole volumes for a 3D stage 1."""
    if stage == 2:
        return Stage2Samples
    return Stage1Volumes if model_config.stage1.volumetric else Stage1Samples


class Stage2Samples(_Samples):
    """Slices of the ground-truth 3D liver box padded by a random 10-60 native pixels per side, resized to
    stage2_size: (image (K, S, S) of K context slices, masks (2, S, S) liver/tumor, edge targets (2, S, S)).

    Slices come from the box and a few beyond it; tumor slices make up `tumor_slice_fraction` of a tumor
    case's samples, and with probability `synthetic_tumors` tumors are painted into the sample's slab.
    """

    stage = 2

    def __init__(
        self,
        cases: list[CachedCase],
        model_config: ModelConfig,
        train_config: TrainConfig,
        stream: int = TRAINING,
    ):
        super().__init__(cases, model_config, train_config, stream)
        extra = train_config.stage2_extra_slices
        self.z_ranges = [
            (max(0, c.liver_box.z0 - extra), min(c.shape[0], c.liver_box.z1 + extra)) for c in cases
        ]
        self.first_slice = np.cumsum([0] + [z1 - z0 for z0, z1 in self.z_ranges])
        self.tumor_config = train_config.synthetic_tumor_config()
        self.border_tumor_config = dataclasses.replace(self.tumor_config, allow_border=True)
        self.donors = _donors(cases) if train_config.synthetic_tumors > 0 and train_config.real_tumor_paste > 0 else ()
        if self.donors and stream == TRAINING:
            log.info("real tumors to copy: %s", ", ".join(f"{d.source} ({d.diameter_mm:.0f} mm)" for d in self.donors))

    def __len__(self) -> int:
        return int(self.first_slice[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        flat = int(rng.integers(len(self)))
        case_index = int(np.searchsorted(self.first_slice, flat, side="right") - 1)
        case = self.cases[case_index]
        z = self.z_ranges[case_index][0] + flat - int(self.first_slice[case_index])
        if case.tumor_slices and rng.random() < self.config.tumor_slice_fraction:
            z = int(rng.choice(case.tumor_slices))
        box = case.liver_box
        low, high = self.config.stage2_pad_native
        pad_y0, pad_y1, pad_x0, pad_x1 = rng.integers(low, high + 1, size=4)
        rows = slice(max(0, box.y0 - pad_y0), min(case.shape[1], box.y1 + pad_y1))
        columns = slice(max(0, box.x0 - pad_x0), min(case.shape[2], box.x1 + pad_x1))
        # Views of the whole case: only the slices stacked below are read.
        ct, label = case.ct[:, rows, columns], case.label[:, rows, columns]
        if self.config.synthetic_tumors > 0 and rng.random() < self.config.synthetic_tumors:
            ct, label, z = self._synthetic(case, z, rows, columns, rng)
        image = self._image(ct, label, z, case.spacing[2], rng)  # (K, h, w)
        masks = np.stack([label[z] >= 1, label[z] == 2]).astype(np.float32)
        size = (self.prep.stage2_size, self.prep.stage2_size)
        stack = resize(torch.from_numpy(np.concatenate([image, masks]))[None], size)[0]  # (K + 2, S, S)
        image, masks = self._geometry_and_noise(stack[:-2], stack[-2:], rng)
        masks = (masks > 0.5).float()
        edges = edge_targets(masks.numpy().astype(bool), self.config.edge_target)
        return image, masks, torch.from_numpy(edges)

    def _synthetic(
        self, case: CachedCase, z: int, rows: slice, columns: slice, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """A thin slab around slice z with synthetic tumors painted into it in 3D (hence cut by the slice), and
        z's index in it. The slab holds every context neighbour, so a tumor runs on through the channels; it
        is clipped only at the volume's ends, where context_stack repeats the end slice as it does there."""
        half = max(SYNTHETIC_SLAB_HALF, self.prep.context_slices // 2)
        z0, z1 = max(0, z - half), min(case.shape[0], z + half + 1)
        ct, label = case.ct[z0:z1, rows, columns], case.label[z0:z1, rows, columns]
        if not (label[z - z0] == 1).any():
            return ct, label, z - z0
        try:
            border = rng.random() < self.config.synthetic_border_probability
            config = self.border_tumor_config if border else self.tumor_config
            ct, label, _ = insert_tumors_slab(ct, label, case.spacing, rng, config, self.donors)
        except UserInputError:  # too little liver (or room) in this slab: keep the real slices
            pass
        return ct, label, z - z0


def _donors(cases: list[CachedCase]) -> tuple:
    """The real tumors of the training cases that --real-tumor-paste copies; refused when there are none."""
    donors = tuple(
        donor
        for case in cases
        if case.tumor_slices
        for donor in donors_from_case(case.ct, case.label, case.spacing, case.name)
    )
    if not donors:
        raise UserInputError(
            f"--real-tumor-paste: none of the training cases ({', '.join(c.name for c in cases)}) has a real tumor "
            f"(label 2) of {MIN_DONOR_ML:g} ml or more beside liver to copy; add such a case or leave the option out"
        )
    return donors


def _round_stride(pixels: float) -> int:
    return max(STRIDE, int(round(pixels / STRIDE)) * STRIDE)


def _pad(tensor: torch.Tensor, size: tuple[int, ...], value: float) -> torch.Tensor:
    """(C, h, w) -> (C, *size) (or (C, d, h, w) -> (C, *size)), centred, filled with `value`."""
    gaps = [s - n for s, n in zip(size, tensor.shape[1:])]
    if not any(gaps):
        return tensor
    pads = [p for gap in reversed(gaps) for p in (gap // 2, gap - gap // 2)]  # last axis first, as F.pad wants
    return torch.nn.functional.pad(tensor, pads, value=value)
