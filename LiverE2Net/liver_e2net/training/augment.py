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


def random_affine_3d(rng: np.random.Generator, config: AugmentConfig, depth: int, height: int, width: int
                     ) -> torch.Tensor:  # fmt: skip
    """(3, 4) theta for `F.affine_grid` on isotropic (D, H, W) volumes: a turn about the body axis up to
    rotation_deg, tilts up to a third of that, a zoom from config.scale varied +-5 % per axis, a shift."""
    turn, *tilts = np.radians(rng.uniform(-1, 1, 3) * config.rotation_deg * np.array([1, 1 / 3, 1 / 3]))
    rotation = np.eye(3)
    for angle, (i, j) in zip((turn, *tilts), ((0, 1), (1, 2), (0, 2))):  # (x, y, z) axes: about z, x, y
        turn_ij = np.eye(3)
        turn_ij[[i, i, j, j], [i, j, i, j]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        rotation = rotation @ turn_ij
    zoom = rng.uniform(*config.scale) * rng.uniform(0.95, 1.05, 3)  # > 1 enlarges the anatomy
    half = np.array([width, height, depth], dtype=np.float64) / 2  # voxels -> [-1, 1] coordinates
    linear = np.diag(1 / half) @ rotation @ np.diag(1 / zoom) @ np.diag(half)
    shift = rng.uniform(-config.translate, config.translate, 3) * 2
    return torch.tensor(np.concatenate([linear, shift[:, None]], axis=1), dtype=torch.float32)


def warp(image: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image (K, H, W) in [-1, 1] (K context slices) and float masks (C, H, W) -> the same, resampled together;
    outside becomes air / 0. Volumes (K, D, H, W) and (C, D, H, W) with a (3, 4) theta alike."""
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
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if rng.random() < config.sharpen_probability:
        image = sharpen(image, rng, config)
    return image


# Contrast phases as parenchyma / intra-hepatic vessel / tumor attenuation (HU). Portal-venous is what the
# training CTs show, so it is "leave as is". Ranges from the liver CT literature: arterial parenchyma 50-75 HU
# with unenhanced portal/hepatic veins; equilibrium (delayed) 70-100 HU with vessels close to the parenchyma;
# unenhanced 45-65 HU with blood at 35-50 HU. Tumors: metastases stay hypo-attenuating in every phase; HCC is
# hyper-attenuating in the arterial phase and washes out (hypo) later (LI-RADS v2018).
PHASES = ("portal", "arterial", "delayed", "unenhanced")
_LIVER_HU = {"arterial": (50.0, 75.0), "delayed": (70.0, 100.0), "unenhanced": (45.0, 65.0)}
_VESSEL_OFFSET_HU = {"arterial": (-10.0, 10.0), "delayed": (0.0, 25.0), "unenhanced": (-20.0, -5.0)}
_TUMOR_OFFSET_HU = {"arterial": ((20.0, 60.0), (-50.0, -10.0)), "delayed": ((-40.0, -10.0),) * 2,
                    "unenhanced": ((-25.0, -5.0),) * 2}
VESSEL_MARGIN_HU = 25.0  # voxels this much brighter than the parenchyma median (and < 400 HU) are vessels


def simulate_phase(hu: np.ndarray, label: np.ndarray, phase: str, rng: np.random.Generator) -> np.ndarray:
    """(K, y, x) HU with its label (0/1/2) -> float32 HU as if acquired in `phase`.

    The liver, its vessels and its tumors each move to the phase's attenuation: a per-voxel HU change, blurred
    in-plane by 0.7 pixel so that the label's outline does not become a step the network could learn.
    """
    hu = hu.astype(np.float32)
    liver = label == 1
    if phase == "portal" or liver.sum() < 50:
        return hu
    median = float(np.median(hu[liver]))
    target = rng.uniform(*_LIVER_HU[phase])
    vessels = liver & (hu > median + VESSEL_MARGIN_HU) & (hu < 400)  # a bright tumor stays a tumor
    tumor = label == 2
    change = np.zeros_like(hu)
    change[liver & ~vessels] = target - median
    if vessels.any():  # their level moves to the phase's, keeping a little of their own texture
        level = target + rng.uniform(*_VESSEL_OFFSET_HU[phase])
        change[vessels] = level + (hu[vessels] - hu[vessels].mean()) * 0.3 - hu[vessels]
    if tumor.any():
        hyper, hypo = _TUMOR_OFFSET_HU[phase]
        level = target + rng.uniform(*(hyper if rng.random() < 0.5 else hypo))
        change[tumor] = level + (hu[tumor] - float(np.median(hu[tumor]))) * 0.7 - hu[tumor]
    return hu + ndimage.gaussian_filter(change, (0, 0.7, 0.7))


def thick_slice_stack(volume_zyx: np.ndarray, z: int, context_slices: int, spacing_z: float,
                      thickness_mm: float) -> np.ndarray:
    """Slice z of a [z, y, x] volume as a `thickness_mm` reconstruction would show it -> (K, y, x) float32.

    Each output slice is the mean of the native slices it covers (partial-volume averaging); context neighbours
    lie one thickness away, as the neighbouring slices of a thick-slice series do. At the volume's ends the end
    slice repeats, as `context_stack` does.
    """
    depth = volume_zyx.shape[0]
    step = max(1, int(round(thickness_mm / spacing_z)))
    half = context_slices // 2
    slices = []
    for k in range(-half, half + 1):
        centre = z + k * step
        lo, hi = centre - step // 2, centre - step // 2 + step
        rows = np.clip(np.arange(lo, hi), 0, depth - 1)
        slices.append(volume_zyx[rows].astype(np.float32).mean(axis=0))
    return np.stack(slices)


def limit_field_of_view(hu: np.ndarray, rng: np.random.Generator, padding_values=(-1024.0, -2048.0, -3024.0)
                        ) -> np.ndarray:
    """(K, y, x) HU -> the same inside a random reconstruction circle (radius 40-60 % of the slice, centre
    shifted up to 10 %), scanner padding outside: truncated bodies and the -1024/-2048/-3024 fills of vendors
    (all below the HU window, so after windowing padding reads as air whichever the vendor)."""
    _, height, width = hu.shape
    radius = rng.uniform(0.40, 0.60) * max(height, width)
    cy, cx = (height / 2, width / 2) + rng.uniform(-0.1, 0.1, 2) * (height, width)
    yy, xx = np.ogrid[:height, :width]
    outside = (yy - cy) ** 2 + (xx - cx) ** 2 > radius**2
    return np.where(outside[None], np.float32(rng.choice(padding_values)), hu.astype(np.float32))


def sharpen(image: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """A sharp (bone/lung-like) reconstruction kernel: unsharp masking of (K, H, W), same kernel for all K."""
    array = image.numpy()
    amount = np.float32(rng.uniform(*config.sharpen_amount))
    blurred = ndimage.gaussian_filter(array, (0, 1.0, 1.0))
    return torch.from_numpy(np.ascontiguousarray(array + amount * (array - blurred), dtype=np.float32))
