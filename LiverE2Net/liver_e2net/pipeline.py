"""Two-stage inference: stage 1 (coarse liver, every slice or the whole CT in 3D) -> liver box -> stage 2 (E2Net on the box) -> label map.

Everything geometric is undone: the label map comes back on the input's exact grid and orientation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .checkpoint import Checkpoint, default_model_path, load_checkpoint
from .config import ModelConfig, PreprocessingConfig
from .devices import autocast_dtype, configure_threads, dtype_name, resolve_device
from .errors import UserInputError
from .fp_filter import apply_filter, choose_filter
from .io import Volume
from .models import channels_last, to_channels_last
from .models.fusion import fuse_batchnorm
from .postprocessing import (
    DEFAULT_MIN_LESION_ML,
    LIVER_THRESHOLD,
    compose_label,
    demote_bright_tumors,
    grow_liver,
    largest_component,
    tumor_mask,
)
from .preprocessing import (
    Box,
    bounding_box,
    box_on_input_grid,
    context_stack,
    downsample_volume,
    from_network_frame,
    normalize_hu,
    pad_to_multiple,
    resize,
    stage1_grid,
    stage1_size,
    to_network_frame,
)
from .progress import Reporter, null_reporter
from .protocol import TTA_MODES

# Share of the progress bar each step takes (stage 2 runs the larger network on most slices).
PROGRESS_SPAN = {"stage1": (0.05, 0.35), "stage2": (0.35, 0.9)}
STRIDE = 32  # the networks downsample by 32: inputs must be multiples of it


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Test-time fusion after Bi et al. (ISBI 2017): stage-2 probabilities averaged over input scales and a
    left-right flip, each mapped back to the original grid before averaging."""

    __test__ = False  # not a pytest class, despite its name
    flip: bool = False
    scales: tuple[float, ...] | None = (1.0,)  # None: the model's own (PreprocessingConfig.tta_scales)

    @classmethod
    def from_mode(cls, mode: str, scales: tuple[float, ...] | None = None) -> TestTimeAugmentation:
        if mode not in TTA_MODES:
            raise UserInputError(f"unknown --tta {mode!r}; choose one of {', '.join(TTA_MODES)}")
        multiscale = "multiscale" in mode
        return cls(flip="flip" in mode, scales=(tuple(scales) if scales else None) if multiscale else (1.0,))

    def for_model(self, config: ModelConfig) -> TestTimeAugmentation:
        """This fusion with the model's own scales where none were given."""
        return self if self.scales is not None else replace(self, scales=config.preprocessing.tta_scales)

    def sizes(self, size: int) -> list[int]:
        sizes = [int(round(size * scale / STRIDE)) * STRIDE for scale in self.scales]
        if min(sizes) < STRIDE or min(self.scales) <= 0:
            raise UserInputError(
                f"TTA scales {list(self.scales)} make the {size}-pixel stage-2 input smaller than the "
                f"network stride ({STRIDE} pixels); use scales of at least {STRIDE / size:.3f}"
            )
        return sizes


def flip_warning(checkpoint: Checkpoint) -> str | None:
    """Why flip TTA may hurt this model: one trained without left-right flips never saw mirrored anatomy (the
    liver on the patient's left), and averaging its mirrored guess in shrank the liver by 11 % on a real CT."""
    augment = checkpoint.metadata.get("train_config", {}).get("augment", {})
    if augment.get("flip_lr"):
        return None
    return (
        "this model was not trained with left-right flips, so flip test-time augmentation can make it worse; "
        "use --tta multiscale (the panel's Accuracy: Best) or none"
    )


def single_scale_warning(config: ModelConfig, tta: TestTimeAugmentation) -> str | None:
    """Why --tta multiscale changes nothing: the model carries one scale (fusion did not hold up on held-out CT)."""
    if tta.scales is not None or not config.preprocessing.best_is_fast:
        return None
    return (
        "this model's multiscale fusion did not hold up on held-out CT, so it runs one pass: Best equals Fast "
        "(--tta-scales 0.875 1 forces a fusion)"
    )


@dataclass
class SegmentationResult:
    label: np.ndarray  # [z, y, x] uint8 {0 background, 1 liver, 2 tumor} on the input grid
    probabilities: np.ndarray | None  # [2, z, y, x] float32 liver / tumor probability on the input grid
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rejected_candidates: int | None = None  # tumors removed by the false-positive filter; None: no filter
    probability_box: tuple[slice, ...] | None = None  # [z, y, x] slices outside which the probabilities are 0
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML  # tumor components smaller than this were dropped


class Segmenter:
    """Holds both networks on a device; `segment` runs one CT. Reuse it across cases to load the model once."""

    def __init__(
        self,
        checkpoint: Checkpoint | str | Path | None = None,
        device: str = "auto",
        threads: int | None = None,
        stage1_batch: int = 16,
        stage2_batch: int = 8,
        tta: TestTimeAugmentation = TestTimeAugmentation(),
        fp_filter: str = "auto",
        precision: str = "auto",
    ):
        if checkpoint is None:
            checkpoint = default_model_path()
            if checkpoint is None:
                raise UserInputError(
                    "no model given and no bundled model found in Resources/Models; pass --model"
                )
        self.checkpoint = (
            checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, check_weights=False)
        )
        self.config = self.checkpoint.config
        # auto: the model's own tumor false-positive filter if it carries one (on: it must, off: never).
        self.fp_filter = choose_filter(
            self.checkpoint.fp_filter, fp_filter, str(self.checkpoint.path or "given")
        )
        self.device = resolve_device(device)
        self.threads = configure_threads(threads) if self.device.type == "cpu" else torch.get_num_threads()
        self.stage1, self.stage2 = (
            to_channels_last(fuse_batchnorm(n)) for n in self.checkpoint.build(self.device)
        )
        self.autocast = autocast_dtype(self.device, precision)
        self.precision = dtype_name(self.autocast)  # what ran: float32, bfloat16 or float16
        self.stage1_batch, self.stage2_batch = stage1_batch, stage2_batch
        self.tta = tta.for_model(self.config)
        self.tta_warnings = [w for w in (flip_warning(self.checkpoint) if tta.flip else None,
                                         single_scale_warning(self.config, tta)) if w]  # fmt: skip
        self.stage2_sizes = self.tta.sizes(self.config.preprocessing.stage2_size)
        # A filter runs at the size it was trained at; without one (or with it off), the default.
        self.min_lesion_ml = self.fp_filter.min_lesion_ml if self.fp_filter is not None else DEFAULT_MIN_LESION_ML

    @torch.inference_mode()
    def segment(
        self,
        image: sitk.Image,
        tumors: bool = True,
        probabilities: bool = False,
        min_lesion_ml: float | None = None,
        progress: Reporter = null_reporter,
        grow: bool = True,
    ) -> SegmentationResult:
        """`grow`: the liver's last in-plane growth (grow_liver); off for the FP filter's training candidates,
        since the filter judges the liver as drawn before it grows. `min_lesion_ml` None: the model's own."""
        if min_lesion_ml is None:
            min_lesion_ml = self.min_lesion_ml
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        volume, record = to_network_frame(image)
        progress("stage1", PROGRESS_SPAN["stage1"][0], "coarse liver")
        box, coarse = self._stage1(volume, progress)
        seconds["stage1"] = time.perf_counter() - start
        warnings = list(self.tta_warnings)
        rejected = 0 if tumors and self.fp_filter is not None else None
        probability_map = input_grid_zeros(record, 2) if probabilities else None
        probability_box = None
        if box is None:
            warnings.append("no liver found in this CT: the liver segment is empty")
            label = np.zeros(volume.array.shape, np.uint8)
        else:
            mark = time.perf_counter()
            box_probabilities = self._stage2(volume, box, progress)  # (2, z, y, x) float32 on the box
            prep = self.config.preprocessing
            if prep.liver_gate_mm is not None and self.config.stage1.volumetric:
                box_probabilities *= near_coarse_liver(
                    coarse, volume.array.shape, box, prep.liver_gate_mm, prep.stage1_pixel_mm
                )
            seconds["stage2"] = time.perf_counter() - mark
            mark = time.perf_counter()
            progress("postprocess", 0.9, "cleaning up")
            # Liver and tumors lie inside the box: clean up there, a fraction of the whole volume.
            tumor = tumor_mask(box_probabilities[1]) if tumors else None
            label = np.zeros(volume.array.shape, np.uint8)
            label[box.slices] = demote_bright_tumors(
                compose_label(box_probabilities[0] > LIVER_THRESHOLD, tumor, volume.voxel_ml, min_lesion_ml),
                volume.array[box.slices],
            )
            if rejected is not None:  # the box holds the whole liver, so its features equal the full volume's
                label[box.slices], rejected = apply_filter(
                    label[box.slices],
                    volume.array[box.slices],
                    box_probabilities[1],
                    volume.spacing,
                    self.fp_filter,
                )
            if grow:
                label[box.slices] = grow_liver(label[box.slices], volume.array[box.slices], volume.spacing[1::-1])
            if not label.any():
                warnings.append("no liver found in this CT: the liver segment is empty")
            if probability_map is not None:  # written in the box only: the rest stays untouched zero pages
                probability_box, box_probabilities = box_on_input_grid(box_probabilities, box, volume, record)
                probability_map[(slice(None), *probability_box)] = box_probabilities
            del box_probabilities
            seconds["postprocess"] = time.perf_counter() - mark
        label = from_network_frame(label, volume, record)
        seconds["total"] = time.perf_counter() - start
        return SegmentationResult(
            label, probability_map, seconds, warnings, rejected, probability_box, min_lesion_ml
        )

    def _run(self, network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        batch = channels_last(batch)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            # Contiguous: resizing the probabilities back is 4x slower on channels-last memory (CPU).
            return torch.sigmoid(network.predict(batch).float()).contiguous()

    def _slices(self, array: np.ndarray, start: int, stop: int) -> torch.Tensor:
        """HU slices start:stop of a [z, y, x] array, each with its context neighbours as channels -> normalised
        (B, C, H, W) float on the device (the int16 copy is what crosses to the GPU)."""
        prep = self.config.preprocessing
        stack = context_stack(array, range(start, stop), prep.context_slices)
        return normalize_hu(torch.from_numpy(stack).to(self.device, non_blocking=True), prep.hu_window)

    def _stage1(self, volume: Volume, progress: Reporter) -> tuple[Box | None, np.ndarray]:
        """Coarse liver (slice by slice, or the whole CT at once by a 3D stage 1) -> the liver box (native voxels)
        of its largest 3D component, and that component on stage 1's grid."""
        coarse = (self._coarse_volume if self.config.stage1.volumetric else self._coarse_slices)(volume, progress)
        if not coarse.any():
            return None, coarse
        coarse = largest_component(coarse)
        return liver_box(coarse, volume, self.config.preprocessing), coarse

    def _coarse_slices(self, volume: Volume, progress: Reporter) -> np.ndarray:
        """[z, h, w] coarse liver of every slice at the stage-1 pixel size."""
        prep = self.config.preprocessing
        depth, height, width = volume.array.shape
        coarse_size = stage1_size((height, width), (volume.spacing[1], volume.spacing[0]), prep.stage1_pixel_mm)
        coarse = np.zeros((depth, *coarse_size), bool)
        for start in range(0, depth, self.stage1_batch):
            stop = min(depth, start + self.stage1_batch)
            batch = resize(self._slices(volume.array, start, stop), coarse_size)
            coarse[start:stop] = (self._run(self.stage1, batch)[:, 0] > 0.5).cpu().numpy()
            progress("stage1", _span("stage1", stop / depth), f"slice {stop}/{depth}")
        return coarse

    def _coarse_volume(self, volume: Volume, progress: Reporter) -> np.ndarray:
        """[d, h, w] coarse liver of the whole CT on the 3D stage 1's voxel grid, in one pass."""
        prep = self.config.preprocessing
        grid = stage1_grid(volume.array.shape, volume.spacing, prep.stage1_pixel_mm)
        image = normalize_hu(downsample_volume(volume.array, grid), prep.hu_window)[None, None]
        image, inside = pad_to_multiple(image.to(self.device), self.stage1.stride, -1.0)
        coarse = (self._run(self.stage1, image)[0, 0][inside] > 0.5).cpu().numpy()
        progress("stage1", _span("stage1", 1.0), f"{'x'.join(map(str, grid[::-1]))} voxels")
        return coarse

    def _stage2(self, volume: Volume, box: Box, progress: Reporter) -> np.ndarray:
        """E2Net on every slice of the liver box resized to stage2_size; probabilities resized back to the box."""
        # The in-plane crop of every slice: context neighbours of the box's end slices lie outside it in z.
        crop = volume.array[:, box.slices[1], box.slices[2]]
        depth, box_shape = box.z1 - box.z0, crop.shape[1:]
        result = np.empty((2, depth, *box_shape), np.float32)
        flips = (False, True) if self.tta.flip else (False,)
        for start in range(0, depth, self.stage2_batch):
            stop = min(depth, start + self.stage2_batch)
            slices = self._slices(crop, box.z0 + start, box.z0 + stop)
            probabilities = 0
            for size in self.stage2_sizes:
                for flip in flips:
                    batch = resize(slices, (size, size))
                    output = self._run(self.stage2, batch.flip(-1) if flip else batch)
                    probabilities = probabilities + resize(output.flip(-1) if flip else output, box_shape)
            probabilities = probabilities / (len(self.stage2_sizes) * len(flips))
            result[:, start:stop] = probabilities.transpose(0, 1).cpu().numpy()
            progress("stage2", _span("stage2", stop / depth), f"slice {stop}/{depth}")
        return result


def liver_box(coarse: np.ndarray, volume: Volume, prep: PreprocessingConfig) -> Box:
    """The native-voxel box of a (non-empty) coarse liver on a grid that divides `volume`'s evenly (stage 1's),
    with box_margin_mm in-plane and the z margin of `prep` (box_margin_slices, at least box_margin_z_mm)."""
    coarse_box = bounding_box(coarse, (0, 0), 0)
    shape = volume.array.shape
    scale = [n / c for n, c in zip(shape, coarse.shape)]
    margin = (prep.z_margin(volume.spacing[2]), *(int(round(prep.box_margin_mm / s)) for s in volume.spacing[1::-1]))
    low = (coarse_box.z0, coarse_box.y0, coarse_box.x0)
    high = (coarse_box.z1, coarse_box.y1, coarse_box.x1)
    z0, y0, x0 = (max(0, int(b * s) - m) for b, s, m in zip(low, scale, margin))
    z1, y1, x1 = (min(n, int(np.ceil(b * s)) + m) for b, s, m, n in zip(high, scale, margin, shape))
    return Box(z0, z1, y0, y1, x0, x1)


def near_coarse_liver(coarse: np.ndarray, shape: tuple[int, int, int], box: Box, margin_mm: float,
                      voxel_mm: float) -> np.ndarray:  # fmt: skip
    """[z, y, x] bool over `box`: native voxels within about `margin_mm` of the coarse liver (on an isotropic
    stage-1 grid of `voxel_mm` that divides `shape` evenly), each mapped to the coarse voxel holding it."""
    radius = int(np.ceil(margin_mm / voxel_mm))
    ball = np.linalg.norm(np.indices((2 * radius + 1,) * 3) - radius, axis=0) <= radius
    grown = ndimage.binary_dilation(coarse, ball) if radius else coarse
    index = [
        np.minimum(np.arange(start, stop) * c // n, c - 1)
        for start, stop, c, n in zip((box.z0, box.y0, box.x0), (box.z1, box.y1, box.x1), coarse.shape, shape)
    ]
    return grown[np.ix_(*index)]


def input_grid_zeros(record, channels: int) -> np.ndarray:
    """A float32 [channels, z, y, x] zero map on the input grid; np.zeros maps pages lazily, so only the voxels
    written (the liver box) take memory until the map is read."""
    return np.zeros((channels, *record.reference.GetSize()[::-1]), np.float32)


def _span(stage: str, fraction: float) -> float:
    low, high = PROGRESS_SPAN[stage]
    return low + (high - low) * fraction
