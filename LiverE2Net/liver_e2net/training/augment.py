"""CT augmentation for one sample, driven by the sample's own numpy Generator (reproducible on any worker).

Intensity changes happen in HU before windowing, as scanners differ; geometric changes (rotation, scale,
shift, optional left-right flip) act on the network-resolution image and its masks together; noise and
blur act last, at network resolution, where the network sees them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .config import AugmentConfig


def adjust_hu(
    hu: np.ndarray, rng: np.random.Generator, config: AugmentConfig, window: tuple[float, float]
) -> np.ndarray:
    """Contrast scaled about the window centre, then shifted: float32 HU."""
    centre = np.float32((window[0] + window[1]) / 2)
    scale = np.float32(rng.uniform(*config.hu_scale))
    shift = np.float32(rng.uniform(-config.hu_shift, config.hu_shift))
    return (hu.astype(np.float32) - centre) * scale + centre + shift


def random_affine(rng: np.random.Generator, config: AugmentConfig, height: int, width: int) -> torch.Tensor:
    """(2, 3) theta for `F.affine_grid`: output -> input coordinates, a true rotation on non-square images."""
    angle = math.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))
    zoom = rng.uniform(*config.scale)  # > 1 enlarges the anatomy
    flip = -1.0 if config.flip_lr and rng.random() < 0.5 else 1.0
    shift_x, shift_y = (
        rng.uniform(-config.translate, config.translate, 2) * 2
    )  # normalised coordinates span 2
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # Rotation in pixel units expressed in the [-1, 1] x [-1, 1] coordinates of a height x width image.
    return torch.tensor(
        [[cos * flip, -sin * height / width, shift_x], [sin * width / height * flip, cos, shift_y]],
        dtype=torch.float32,
    )


def warp(image: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image (K, H, W) in [-1, 1] (K context slices) and float masks (C, H, W) -> the same, resampled together;
    outside becomes air / 0."""
    stack = torch.cat([image + 1.0, masks])[None]  # +1: zero padding then means -1, the air of the window
    grid = F.affine_grid(theta[None], list(stack.shape), align_corners=False)
    warped = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return warped[: len(image)] - 1.0, warped[len(image) :]


def noise_and_blur(image: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """image (K, H, W) normalised -> the same with a slight in-plane Gaussian blur (one kernel for all K slices,
    as one reconstruction kernel made them) and/or Gaussian noise (independent per slice, as a scanner's)."""
    array = image.numpy()
    if rng.random() < config.blur_probability:
        sigma = rng.uniform(*config.blur_sigma)
        array = ndimage.gaussian_filter(array, (0, sigma, sigma))
    if rng.random() < config.noise_probability:
        array = array + rng.standard_normal(array.shape, dtype=np.float32) * np.float32(config.noise_std)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
