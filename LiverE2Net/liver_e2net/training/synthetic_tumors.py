"""Synthetic liver tumors after Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023).

Why: only one case here has real tumors, so the tumor branch learns from tumors painted into
healthy livers. Each tumor is an ellipsoid (random axes, random rotation) warped by a smooth random
displacement field, filled with the local liver median plus a contrast (mostly hypodense) and a
texture of upsampled Gaussian noise, blended into the CT through a Gaussian-blurred alpha mask, and
optionally given a small mass effect that pushes the surrounding tissue outward.

Conventions: arrays are indexed [z, y, x]; `spacing` is (x, y, z) in mm as SimpleITK's GetSpacing()
returns it; labels are 0 background, 1 liver, 2 tumor (tumor inside the liver).

Guarantees, for every synthetic tumor:
* its voxels (set to label 2) were all liver (label 1), at least `liver_margin_mm` from the liver
  border unless `allow_border`, and the tumor lies wholly inside the volume (in-plane only for slabs);
* no real or earlier synthetic tumor (label 2) lies within `change_margin_mm` of it, and no vessel
  (liver voxel brighter than the liver's `vessel_percentile` after light smoothing) within
  `vessel_margin_mm`;
* blur margin: the CT changes only on the voxels it labels plus liver (label 1) voxels within
  `config.change_margin_mm` of them (the edge blur reaches `blur_margin_mm`, the mass effect
  `mass_effect_extent_mm`); no other voxel of the CT or the label is touched.
All filtering happens in a box around each tumor, never on the whole volume, so a call is cheap
enough for a data loader.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import UserInputError
from .real_tumors import DonorTumor, transformed_donor

LIVER, TUMOR = 1, 2
# Appearances seen on contrast CT (Hu et al. 2023; LI-RADS v2018 for HCC): hypo-attenuating metastases,
# hyper-attenuating (arterial HCC, hypervascular metastases), rim-enhancing, iso-attenuating with only a thin
# enhancing capsule to show them, a necrotic (much darker) centre inside a viable wall, and calcified
# (mucinous colorectal) metastases with bright specks, and target lesions (a dark core in a faint periphery).
TUMOR_KINDS = ("hypodense", "hyperdense", "rim", "isodense", "capsule", "necrotic", "calcified", "target")
GRADED_KINDS = ("hypodense", "hyperdense", "necrotic")  # kinds that may have a fading margin: no edge of their own
_VESSEL_SMOOTH_MM = 1.0  # smoothing before the vessel threshold, so that CT noise is not taken for vessels
_BACKGROUND_SMOOTH_MM = 1.5  # the tumor replaces CT structure coarser than this and keeps the finer noise
_PERCENTILE_SAMPLES = 200_000  # liver voxels used to estimate the vessel threshold


@dataclass(frozen=True)
class SyntheticTumorConfig:
    """How synthetic tumors are drawn; every range is sampled uniformly per tumor.

    Defaults follow Hu et al. (2023) and typical contrast CT: 1-10 tumors (fewer more often: each extra one
    with probability `extra_tumor_probability`), size classes tiny (3-5 mm), small (5-10), medium (10-25) and
    large (25-80) with weights favouring small/medium. Contrast to the liver: hypodense -80 to -20 HU
    (colorectal metastases in the portal phase, e.g. case06's 48 ml metastasis at about -30 HU), hyperdense
    +15 to +40 (arterial HCC), isodense -15 to -5 with a +20 to +40 HU capsule, necrotic centres -100 to -60.
    Target lesions (the "target"/"doughnut" look of large metastases, Silverman et al., Radiology 1998): a
    dark hypodense core inside a wide viable periphery only -20 to -5 HU from the liver, labelled tumor to its
    edge, so that the network learns a tumor's faint margin and not only its dark centre.
    Where tumors may touch the border (`allow_border`), a share of them (`exophytic_probability`) is centred on
    the liver's outline and bulges out of it into the soft tissue beside the liver (fat, muscle: -150 to 150 HU),
    as subcapsular metastases and exophytic HCC do; the bulge is tumor too, so the network does not learn that a
    tumor stops at the liver's outline. A share of them (`organ_bulge_share`) is centred where the liver meets
    tissue of its own density (duodenum, pancreas, stomach wall, cava: within `organ_hu_window` of the liver's
    median), where case06's held-out hilar metastasis was read as bowel.
    Ill-defined margins, fitted to case06's metastasis (about -40 HU from the liver in its core, -24 HU 2-4 mm
    inside its labelled edge and -16 HU at it): a share (`graded_margin_probability`) of the hypo-, hyper- and
    necrotic tumors fade from their contrast to `margin_edge_fraction` of it at the edge, over `margin_width_mm`
    (at most 60 % of their depth), labelled tumor to the edge; a network that learnt sharp edges only draws the
    dark core of such a tumor.
    """

    count_range: tuple[int, int] = (1, 10)
    extra_tumor_probability: float = 0.4  # P(n + 1 tumors | n): 1 tumor 60 %, 2 24 %, 3 10 % ...
    size_classes_mm: tuple[tuple[float, float], ...] = ((3.0, 5.0), (5.0, 10.0), (10.0, 25.0), (25.0, 80.0))
    size_class_weights: tuple[float, ...] = (0.2, 0.35, 0.3, 0.15)
    axis_ratio_range: tuple[float, float] = (0.75, 1.25)  # per-axis ratio before normalising the volume
    warp_strength: float = 0.12  # elastic displacement (std), as a fraction of the radius; below 0.25
    warp_points: int = 5  # control points per axis of the displacement grid: lobulation scale
    kind_weights: tuple[float, ...] = (0.4, 0.12, 0.1, 0.06, 0.08, 0.08, 0.06, 0.1)  # in TUMOR_KINDS order
    hypodense_hu: tuple[float, float] = (-80.0, -20.0)
    hyperdense_hu: tuple[float, float] = (15.0, 40.0)
    isodense_hu: tuple[float, float] = (-15.0, -5.0)
    rim_hu: tuple[float, float] = (15.0, 40.0)  # rim contrast of rim-enhancing and capsule tumors
    rim_width_mm: float = 2.0
    capsule_width_mm: float = 1.0
    necrosis_hu: tuple[float, float] = (-100.0, -60.0)  # the necrotic centre, relative to the liver
    target_periphery_hu: tuple[float, float] = (-20.0, -5.0)  # a target lesion's outer part; its core: hypodense_hu
    target_core_fraction: float = 0.3  # the core lies deeper than this share of the lesion's depth
    calcification_hu: tuple[float, float] = (150.0, 400.0)  # bright specks, relative to the liver
    texture_std_hu: float = 6.0
    texture_scale_mm: float = 4.0  # grain of the texture: spacing of the noise before upsampling
    edge_blur_mm: float = 1.0  # Gaussian sigma of the soft edge (at most a sixth of the diameter)
    mass_effect_probability: float = 0.5
    mass_effect_max_mm: float = 2.0  # largest push at the tumor surface (tumors of 30 mm or more)
    mass_effect_extent_mm: float = 6.0  # the push fades to zero at this distance from the tumor
    liver_margin_mm: float = 3.0
    allow_border: bool = False  # True: tumors may touch the liver border (and, some, bulge out of it)
    exophytic_probability: float = 0.3  # with allow_border: share of tumors centred on the outline, bulging out
    exophytic_min_inside: float = 0.4  # at least this share of a bulging tumor lies in the liver
    soft_tissue_hu: tuple[float, float] = (-150.0, 150.0)  # what a bulging tumor may replace outside the liver
    organ_bulge_share: float = 0.5  # of the bulging tumors: those centred beside tissue of the liver's density
    organ_hu_window: float = 40.0  # "the liver's density": within this of the liver's median HU
    graded_margin_probability: float = 0.5  # share of the hypo-, hyper- and necrotic tumors with a fading margin
    margin_width_mm: tuple[float, float] = (3.0, 8.0)  # depth over which their contrast reaches its core value
    margin_edge_fraction: tuple[float, float] = (0.3, 0.6)  # share of the contrast left at the labelled edge
    # Copies of real tumors (real_tumors.py), where the caller gives some: the share of tumors drawn as one, and
    # the factor on its contrast to its own liver (0.6-1.4: metastases 20-60 HU below the liver in the portal
    # phase, case06's about 30-40).
    real_tumor_probability: float = 0.0
    real_contrast_scale: tuple[float, float] = (0.6, 1.4)
    vessel_percentile: float = 95.0
    vessel_margin_mm: float = 2.0
    max_tries: int = 40  # random centres tried per size before the tumor is shrunk
    shrink_factor: float = 0.8

    def __post_init__(self) -> None:
        low, high = self.count_range
        if not 1 <= low <= high:
            raise UserInputError(f"tumor count range {self.count_range} must satisfy 1 <= min <= max")
        if len(self.size_classes_mm) != len(self.size_class_weights) or not self.size_classes_mm:
            raise UserInputError(
                "size_classes_mm and size_class_weights must be non-empty and of equal length"
            )
        if any(w < 0 for w in self.size_class_weights) or sum(self.size_class_weights) <= 0:
            raise UserInputError(
                f"size class weights {self.size_class_weights} must be >= 0 with a positive sum"
            )
        if any(not 0 < lo <= hi for lo, hi in self.size_classes_mm):
            raise UserInputError(f"tumor diameters {self.size_classes_mm} must be positive (min, max) pairs")
        if not 0 <= self.warp_strength < 0.25:
            raise UserInputError(
                f"warp_strength {self.warp_strength} must lie in [0, 0.25) to keep tumors whole"
            )
        weights = self.kind_weights
        if len(weights) != len(TUMOR_KINDS) or min(weights) < 0 or sum(weights) <= 0:
            raise UserInputError(
                f"kind_weights {weights}: give one weight >= 0 per kind of {', '.join(TUMOR_KINDS)}, with a "
                "positive sum (train --synthetic-kind-weights)"
            )
        if not 0 <= self.extra_tumor_probability < 1:
            raise UserInputError(f"extra_tumor_probability {self.extra_tumor_probability} must lie in [0, 1)")
        if not 0 <= self.exophytic_probability <= 1:
            raise UserInputError(f"exophytic_probability {self.exophytic_probability} must lie in [0, 1]")
        if not 0 <= self.organ_bulge_share <= 1:
            raise UserInputError(f"organ_bulge_share {self.organ_bulge_share} must lie in [0, 1]")
        if not 0 <= self.graded_margin_probability <= 1:
            raise UserInputError(
                f"graded_margin_probability {self.graded_margin_probability} must lie in [0, 1]"
            )
        if not 0 <= self.margin_edge_fraction[0] <= self.margin_edge_fraction[1] <= 1:
            raise UserInputError(f"margin_edge_fraction {self.margin_edge_fraction}: a (low, high) range in [0, 1]")
        if not 0 < self.margin_width_mm[0] <= self.margin_width_mm[1]:
            raise UserInputError(f"margin_width_mm {self.margin_width_mm}: a positive (low, high) range")
        if not 0 <= self.real_tumor_probability <= 1:
            raise UserInputError(f"real_tumor_probability {self.real_tumor_probability} must lie in [0, 1]")
        if not 0 < self.real_contrast_scale[0] <= self.real_contrast_scale[1]:
            raise UserInputError(f"real_contrast_scale {self.real_contrast_scale}: a positive (low, high) range")
        if not 0 < self.shrink_factor < 1:
            raise UserInputError(f"shrink_factor {self.shrink_factor} must lie in (0, 1)")

    @property
    def min_diameter_mm(self) -> float:
        return min(lo for lo, _ in self.size_classes_mm)

    @property
    def blur_margin_mm(self) -> float:
        """The soft edge is a Gaussian truncated at two sigma."""
        return 2.0 * self.edge_blur_mm

    @property
    def change_margin_mm(self) -> float:
        """Farthest distance from a synthetic tumor voxel at which the CT may change."""
        mass = self.mass_effect_extent_mm if self.mass_effect_probability > 0 else 0.0
        return max(self.blur_margin_mm, mass)


@dataclass(frozen=True)
class TumorRecord:
    """One inserted tumor: centre voxel (z, y, x), volume-equivalent diameter, contrast to the liver."""

    centre: tuple[int, int, int]
    diameter_mm: float
    contrast_hu: float
    kind: str
    mass_effect_mm: float
    exophytic: bool = False  # centred on the liver's outline and bulging out of it
    margin_mm: float = 0.0  # width drawn for the fading margin (0: a sharp edge)


@dataclass(frozen=True)
class _Appearance:
    kind: str
    contrast_hu: float
    rim_hu: float
    mass_effect_mm: float
    margin_mm: float = 0.0
    edge_fraction: float = 1.0
    field_scale: float = 1.0  # a real tumor's copy: factor on its contrast field


@dataclass(frozen=True)
class _Shape:
    """A tumor drawn in its own box; `origin` is the index of the tumor centre inside that box."""

    origin: np.ndarray
    core: np.ndarray  # voxels that become label 2
    alpha: np.ndarray  # blend weight of the tumor intensity
    distance_mm: np.ndarray  # distance to the nearest core voxel
    offsets_mm: tuple[np.ndarray, np.ndarray, np.ndarray]  # broadcastable z, y, x offsets from the centre
    core_bounds: tuple[tuple[int, int], ...]  # first and last core index per axis, in box coordinates
    field_hu: np.ndarray | None = None  # a real tumor's copy: its HU relative to the liver over the box


def insert_tumors(
    ct: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    config: SyntheticTumorConfig | None = None,
    donors: tuple[DonorTumor, ...] = (),
) -> tuple[np.ndarray, np.ndarray, list[TumorRecord]]:
    """Return copies of `ct` and `label` [z,y,x] with 1..N synthetic tumors (label 2), and their records; with
    `donors`, a share (config.real_tumor_probability) of them are copies of those real tumors."""
    return _insert(ct, label, spacing, rng, config or SyntheticTumorConfig(), open_z=False, donors=donors)


def insert_tumors_slab(
    ct: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    config: SyntheticTumorConfig | None = None,
    donors: tuple[DonorTumor, ...] = (),
) -> tuple[np.ndarray, np.ndarray, list[TumorRecord]]:
    """As insert_tumors, for a 2.5D stack of K slices: tumors may run through its top and bottom faces.

    A slab is a window of a longer volume, so a tumor centred in it may continue above or below it;
    only the in-plane extent must fit, and the liver size is checked in-plane only.
    """
    return _insert(ct, label, spacing, rng, config or SyntheticTumorConfig(), open_z=True, donors=donors)


@dataclass(frozen=True)
class _Target:
    """The arrays being painted in place, and what every placement needs to know about them."""

    ct: np.ndarray
    label: np.ndarray
    spacing_zyx: np.ndarray
    liver_flat: np.ndarray  # flat indices of tumor-free liver voxels: the candidate centres
    vessel_threshold: float
    open_z: bool
    outline_flat: np.ndarray | None = None  # flat indices of liver voxels on its in-plane outline (allow_border)
    organ_outline_flat: np.ndarray | None = None  # those of them beside non-liver tissue of the liver's density
    donors: tuple[DonorTumor, ...] = ()


def _insert(ct, label, spacing, rng, config: SyntheticTumorConfig, open_z: bool, donors=()):
    spacing_zyx = _check_inputs(ct, label, spacing)
    liver_flat = np.flatnonzero(label.reshape(-1) == LIVER)
    _check_liver_size(label, liver_flat, spacing_zyx, config, open_z)
    threshold = _vessel_threshold(ct, liver_flat, config.vessel_percentile)
    outline = organ_outline = None
    if config.allow_border and config.exophytic_probability > 0:
        outline = _outline_flat(label)
        if config.organ_bulge_share > 0:
            organ_outline = _organ_outline_flat(ct, label, outline, liver_flat, config.organ_hu_window)
    target = _Target(
        ct.copy(), label.copy(), spacing_zyx, liver_flat, threshold, open_z, outline, organ_outline, tuple(donors)
    )
    records = []
    for _ in range(_draw_count(rng, config)):
        record = _place_one(target, rng, config)
        if record is not None:
            records.append(record)
    if not records:
        raise UserInputError(
            f"could not place any synthetic tumor of {config.min_diameter_mm:g} mm or more: the liver is too "
            f"crowded by tumors, vessels or its border (liver margin {config.liver_margin_mm:g} mm)"
        )
    return target.ct, target.label, records


def _place_one(target: _Target, rng: np.random.Generator, config: SyntheticTumorConfig) -> TumorRecord | None:
    """Draw one tumor and paint it; shrink it while no centre satisfies the placement rules."""
    donor = None  # drawn only where there are donors, so that other calls keep their random streams
    if target.donors and config.real_tumor_probability > 0 and rng.random() < config.real_tumor_probability:
        donor = target.donors[int(rng.integers(len(target.donors)))]
    appearance = _draw_appearance(rng, config) if donor is None else _real_appearance(rng, config)
    diameter = _draw_diameter(rng, config)
    # Drawn only where bulging is possible, so that other configs keep their random streams.
    exophytic = target.outline_flat is not None and target.outline_flat.size > 0 and (
        rng.random() < config.exophytic_probability
    )
    beside_organ = exophytic and target.organ_outline_flat is not None and target.organ_outline_flat.size > 0 and (
        rng.random() < config.organ_bulge_share
    )
    while diameter >= config.min_diameter_mm:
        shape = _tumor_shape(diameter, target.spacing_zyx, rng, config, donor)
        centre = _find_centre(shape, target, rng, config, exophytic, beside_organ)
        if centre is None and exophytic:  # no soft tissue beside the outline for it: an ordinary tumor instead
            exophytic = False
            centre = _find_centre(shape, target, rng, config)
        if centre is not None:
            # Small tumors barely displace anything: the push grows with size up to 30 mm; a bulge pushes nothing.
            push = 0.0 if exophytic else round(appearance.mass_effect_mm * min(1.0, diameter / 30.0), 2)
            appearance = replace(appearance, mass_effect_mm=push)
            _paint(target, shape, centre, appearance, rng, config, exophytic)
            contrast = appearance.contrast_hu
            if shape.field_hu is not None:
                contrast = round(appearance.field_scale * float(np.median(shape.field_hu[shape.core])), 2)
            return TumorRecord(
                centre, round(diameter, 2), contrast, appearance.kind, push, exophytic, appearance.margin_mm
            )
        diameter *= config.shrink_factor
    return None


def _check_inputs(ct: np.ndarray, label: np.ndarray, spacing) -> np.ndarray:
    """Fail early, naming the offending value, and turn (x, y, z) spacing into array (z, y, x) order."""
    if ct.shape != label.shape:
        raise UserInputError(
            f"CT shape {ct.shape} and label shape {label.shape} (z, y, x) differ: they must match"
        )
    if ct.ndim != 3:
        raise UserInputError(f"expected 3D arrays [z, y, x], got shape {ct.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise UserInputError(f"spacing {tuple(spacing)} must be three positive (x, y, z) values in mm")
    return np.asarray(spacing, dtype=float)[::-1]


def _check_liver_size(label, liver_flat, spacing_zyx, config: SyntheticTumorConfig, open_z: bool) -> None:
    """The smallest configured tumor plus its liver margin must fit in the liver's bounding box."""
    if liver_flat.size == 0:
        message = "the label has no liver voxels (label 1)"
        if np.any(label == TUMOR):
            message += " outside tumors"
        raise UserInputError(message + ": synthetic tumors need a liver mask")
    coords = np.unravel_index(liver_flat, label.shape)
    extent_zyx = np.array([(c.max() - c.min() + 1) for c in coords]) * spacing_zyx
    margin = 0.0 if config.allow_border else config.liver_margin_mm
    needed = config.min_diameter_mm + 2 * margin
    checked = extent_zyx[1:] if open_z else extent_zyx
    if np.any(checked < needed):
        ez, ey, ex = extent_zyx
        raise UserInputError(
            f"liver too small for a {config.min_diameter_mm:g} mm tumor with a {margin:g} mm border margin "
            f"(needs {needed:g} mm): liver extent is {ex:.1f} x {ey:.1f} x {ez:.1f} mm (x, y, z)"
        )


def _vessel_threshold(ct: np.ndarray, liver_flat: np.ndarray, percentile: float) -> float:
    """Contrast-filled vessels are the brightest liver voxels; a strided sample keeps this cheap."""
    step = max(1, liver_flat.size // _PERCENTILE_SAMPLES)
    return float(np.percentile(ct.reshape(-1)[liver_flat[::step]], percentile))


def _draw_count(rng: np.random.Generator, config: SyntheticTumorConfig) -> int:
    """Geometric from the range's low end: one tumor most often, several now and then, never above the cap."""
    low, high = config.count_range
    count = low
    while count < high and rng.random() < config.extra_tumor_probability:
        count += 1
    return count


def _draw_diameter(rng: np.random.Generator, config: SyntheticTumorConfig) -> float:
    weights = np.asarray(config.size_class_weights, dtype=float)
    low, high = config.size_classes_mm[int(rng.choice(len(weights), p=weights / weights.sum()))]
    return float(rng.uniform(low, high))


def _draw_appearance(rng: np.random.Generator, config: SyntheticTumorConfig) -> _Appearance:
    weights = np.asarray(config.kind_weights, dtype=float)
    kind = TUMOR_KINDS[int(rng.choice(len(TUMOR_KINDS), p=weights / weights.sum()))]
    core_range = {
        "hyperdense": config.hyperdense_hu,
        "isodense": config.isodense_hu,
        "target": config.target_periphery_hu,  # "contrast" is the value at the edge, "rim" the centre's
    }
    contrast = rng.uniform(*core_range.get(kind, config.hypodense_hu))
    if kind in ("rim", "capsule", "isodense"):
        rim = rng.uniform(*config.rim_hu)
    elif kind == "necrotic":
        rim = rng.uniform(*config.necrosis_hu)  # for necrotic tumors the "rim" value is the centre's
    elif kind == "target":
        rim = rng.uniform(*config.hypodense_hu)
    else:
        rim = contrast
    push = (
        rng.uniform(0.5, 1.0) * config.mass_effect_max_mm
        if rng.random() < config.mass_effect_probability
        else 0.0
    )
    margin_mm, edge_fraction = 0.0, 1.0
    if kind in GRADED_KINDS and config.graded_margin_probability > 0 and rng.random() < config.graded_margin_probability:
        margin_mm, edge_fraction = rng.uniform(*config.margin_width_mm), rng.uniform(*config.margin_edge_fraction)
    return _Appearance(kind, round(float(contrast), 2), float(rim), float(push), round(float(margin_mm), 2),
                       float(edge_fraction))  # fmt: skip


def _real_appearance(rng: np.random.Generator, config: SyntheticTumorConfig) -> _Appearance:
    """A real tumor's copy keeps its own margin and inside; only its contrast is scaled, and it may push."""
    scale = float(rng.uniform(*config.real_contrast_scale))
    push = (
        rng.uniform(0.5, 1.0) * config.mass_effect_max_mm
        if rng.random() < config.mass_effect_probability
        else 0.0
    )
    return _Appearance("real", 0.0, 0.0, float(push), field_scale=scale)


def _tumor_shape(
    diameter_mm: float, spacing_zyx: np.ndarray, rng: np.random.Generator, config, donor: DonorTumor | None = None
) -> _Shape:
    """Warped, rotated ellipsoid (or a real tumor's turned copy) of volume-equivalent `diameter_mm`, with its soft
    edge and distance map."""
    field = None
    if donor is None:
        inside, origin = _warped_ellipsoid(diameter_mm, spacing_zyx, rng, config)
    else:
        inside, field, origin = transformed_donor(donor, diameter_mm, spacing_zyx, rng)
    # The box is cropped to the drawn shape plus the widest margin, so filters run on as few voxels as possible.
    pad_mm = max(config.change_margin_mm, config.liver_margin_mm, config.vessel_margin_mm)
    pad = np.ceil(pad_mm / spacing_zyx).astype(int) + 1
    bounds = _bounds(inside)
    crop = tuple(slice(first, last + 1) for first, last in bounds)
    inside = np.pad(inside[crop], [(p, p) for p in pad])
    if field is not None:
        field = np.pad(field[crop], [(p, p) for p in pad], mode="edge")
    origin = origin - [first for first, _ in bounds] + pad
    sigma_mm = min(config.edge_blur_mm, diameter_mm / 6)
    alpha = ndimage.gaussian_filter(inside.astype(np.float32), sigma_mm / spacing_zyx, truncate=2.0)
    core = alpha >= 0.5 * alpha.max()  # half maximum: a tumor finer than the voxels keeps its peak voxel
    distance = ndimage.distance_transform_edt(~core, sampling=spacing_zyx).astype(np.float32)
    alpha[distance > config.blur_margin_mm] = 0
    offsets = _offsets_mm(core.shape, origin, spacing_zyx)
    return _Shape(origin, core, alpha, distance, offsets, _bounds(core), field)


def _warped_ellipsoid(
    diameter_mm: float, spacing_zyx, rng: np.random.Generator, config
) -> tuple[np.ndarray, np.ndarray]:
    """Mask of the ellipsoid after the elastic warp, in a box large enough for any warp, and its centre index."""
    ratios = rng.uniform(*config.axis_ratio_range, size=3)
    axes_mm = diameter_mm / 2 * ratios / np.cbrt(np.prod(ratios))
    rotation = Rotation.from_quat(rng.standard_normal(4)).as_matrix()
    reach_mm = axes_mm.max() * (1 + 2 * np.sqrt(3) * config.warp_strength)
    origin = np.ceil(reach_mm / spacing_zyx).astype(int) + 1
    box = tuple(2 * origin + 1)
    offsets = _offsets_mm(box, origin, spacing_zyx)
    squared = np.zeros(box, dtype=np.float32)
    for row, axis_mm in zip(rotation, axes_mm, strict=True):
        warp = config.warp_strength * np.clip(_smooth_noise(box, (config.warp_points,) * 3, rng), -2, 2)
        squared += ((row[0] * offsets[0] + row[1] * offsets[1] + row[2] * offsets[2]) / axis_mm + warp) ** 2
    return squared <= 1, origin


def _offsets_mm(box, origin, spacing_zyx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable z, y, x distances in mm from the centre voxel of a box."""
    return tuple(
        ((np.arange(n) - o) * s).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (n, o, s) in enumerate(zip(box, origin, spacing_zyx, strict=True))
    )


def _bounds(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """First and last index of a non-empty mask along z, y, x."""
    bounds = []
    for other in ((1, 2), (0, 2), (0, 1)):
        indices = np.flatnonzero(np.any(mask, axis=other))
        bounds.append((int(indices[0]), int(indices[-1])))
    return tuple(bounds)


def _smooth_noise(
    shape: tuple[int, ...], coarse_shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise on a coarse grid, cubic-spline upsampled to `shape`: smooth, random, unit scale."""
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    for axis, size in enumerate(shape):
        # A 3D spline zoom is the product of 1D zooms; applying them axis by axis is ~50x faster.
        weights = ndimage.zoom(
            np.eye(field.shape[axis], dtype=np.float32), (size / field.shape[axis], 1), order=3
        )
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field


def _box_slices(centre, shape: _Shape, volume_shape) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the volume and of the tumor box for their overlap (the box may cross the volume edge)."""
    volume, local = [], []
    for c, o, n, size in zip(centre, shape.origin, shape.core.shape, volume_shape, strict=True):
        low = c - o
        start, stop = max(low, 0), min(low + n, size)
        volume.append(slice(start, stop))
        local.append(slice(start - low, stop - low))
    return tuple(volume), tuple(local)


def _fits_volume(shape: _Shape, centre, volume_shape, open_z: bool) -> bool:
    """The whole core must lie inside the volume (a slab may cut it at its top and bottom faces)."""
    for axis in range(1 if open_z else 0, 3):
        low = centre[axis] - shape.origin[axis]
        first, last = shape.core_bounds[axis]
        if low + first < 0 or low + last >= volume_shape[axis]:
            return False
    return True


def _find_centre(
    shape: _Shape, target: _Target, rng: np.random.Generator, config, exophytic: bool = False,
    beside_organ: bool = False,
) -> tuple[int, ...] | None:
    """Try random liver voxels (outline voxels for a bulging tumor, those beside tissue of the liver's density if
    `beside_organ`) as centre; return the first where every placement rule holds."""
    volume_shape = target.label.shape
    candidates = target.liver_flat
    if exophytic:
        candidates = target.organ_outline_flat if beside_organ else target.outline_flat
    for _ in range(config.max_tries):
        flat = candidates[rng.integers(candidates.size)]
        centre = tuple(int(c) for c in np.unravel_index(flat, volume_shape))
        if not _fits_volume(shape, centre, volume_shape, target.open_z):
            continue
        volume, local = _box_slices(centre, shape, volume_shape)
        if _allowed(shape, local, target.ct[volume], target.label[volume], target, config, exophytic):
            return centre
    return None


def _outline_flat(label: np.ndarray) -> np.ndarray:
    """Flat indices of tumor-free liver voxels beside non-liver in their own slice (the outline, slab or not)."""
    liver = label == LIVER
    inner = ndimage.binary_erosion(liver | (label == TUMOR), np.ones((1, 3, 3), bool), border_value=1)
    return np.flatnonzero((liver & ~inner).reshape(-1))


def _organ_outline_flat(ct, label, outline_flat, liver_flat, window_hu: float) -> np.ndarray:
    """Those of `outline_flat` within two in-plane voxels of non-liver tissue whose HU lies within `window_hu` of
    the liver's median (bowel wall, pancreas, vessels: the neighbours a tumor is hardest to tell from)."""
    sample = liver_flat[:: max(1, liver_flat.size // _PERCENTILE_SAMPLES)]
    median = float(np.median(ct.reshape(-1)[sample]))
    organ = (label == 0) & (np.abs(ct.astype(np.float32) - median) <= window_hu)
    near = ndimage.binary_dilation(organ, np.ones((1, 5, 5), bool))
    return outline_flat[near.reshape(-1)[outline_flat]]


def _allowed(shape: _Shape, local, ct_box, label_box, target: _Target, config, exophytic: bool = False) -> bool:
    """Placement rules: inside the liver (with margin; a bulging tumor: partly, the rest on soft tissue), clear of
    tumors and of vessels."""
    core, distance = shape.core[local], shape.distance_mm[local]
    if exophytic:
        outside = label_box[core] == 0
        low, high = config.soft_tissue_hu
        soft = (ct_box[core] >= low) & (ct_box[core] <= high)
        if np.any(label_box[core] == TUMOR) or np.any(outside & ~soft):
            return False
        if not (outside.any() and 1 - outside.mean() >= config.exophytic_min_inside):
            return False
    elif np.any(label_box[core] != LIVER):
        return False
    if not config.allow_border and np.any(label_box[distance <= config.liver_margin_mm] == 0):
        return False
    if np.any(label_box[distance <= config.change_margin_mm] == TUMOR):
        return False
    sigma = _VESSEL_SMOOTH_MM / target.spacing_zyx
    smooth = ndimage.gaussian_filter(ct_box.astype(np.float32), sigma, truncate=2.0)
    near = distance <= config.vessel_margin_mm
    return not np.any((smooth[near] > target.vessel_threshold) & (label_box[near] == LIVER))


def _paint(target: _Target, shape: _Shape, centre, appearance: _Appearance, rng, config,
           exophytic: bool = False) -> None:  # fmt: skip
    """Blend the tumor into the target's CT and label in place, inside its box and on liver voxels only (a
    bulging tumor also on the soft tissue it reaches outside the liver)."""
    ct, spacing_zyx = target.ct, target.spacing_zyx
    volume, local = _box_slices(centre, shape, ct.shape)
    label_box = target.label[volume]
    liver = label_box == LIVER
    core, alpha, distance = shape.core[local], shape.alpha[local], shape.distance_mm[local]
    original = ct[volume].astype(np.float32)
    surround = original[liver & ~core]  # empty when the tumor fills a tiny liver's box: then the liver itself
    liver_median = float(np.median(surround if surround.size else original[liver]))
    pushed = _mass_effect(original, shape, local, appearance.mass_effect_mm, spacing_zyx, config)
    background = ndimage.gaussian_filter(pushed, _BACKGROUND_SMOOTH_MM / spacing_zyx, truncate=2.0)
    texture_cells = tuple(
        int(np.ceil(n * s / config.texture_scale_mm)) + 2
        for n, s in zip(core.shape, spacing_zyx, strict=True)
    )
    texture = config.texture_std_hu * _unit_std(_smooth_noise(core.shape, texture_cells, rng))
    contrast = _contrast_map(appearance, shape, local, spacing_zyx, rng, config)
    kept_detail = pushed - background  # CT noise finer than the background smoothing, kept in the tumor
    if exophytic:  # the liver's outline would ring through the bulge: keep the noise, not that edge
        spread = 2.0 * float(np.std(kept_detail[liver])) + 1e-3
        kept_detail = np.clip(kept_detail, -spread, spread)
    tumor = pushed + alpha * (liver_median + contrast + texture + kept_detail - pushed)
    reached = alpha > 0
    if appearance.mass_effect_mm > 0:
        reached |= distance < config.mass_effect_extent_mm
    paintable = liver
    if exophytic:
        low, high = config.soft_tissue_hu
        paintable = liver | ((label_box == 0) & (original >= low) & (original <= high))
    changed = paintable & reached
    ct[volume] = np.where(changed, _to_dtype(tumor, ct.dtype), ct[volume])
    label_box[core] = TUMOR


def _contrast_map(appearance: _Appearance, shape: _Shape, local, spacing_zyx, rng, config):
    """HU relative to the liver over the tumor box, times the fading margin's ramp where the tumor has one."""
    if shape.field_hu is not None:
        return appearance.field_scale * shape.field_hu[local]
    flat = appearance.kind in ("hypodense", "hyperdense")
    if flat and appearance.margin_mm <= 0:
        return appearance.contrast_hu
    depth = ndimage.distance_transform_edt(shape.core, sampling=spacing_zyx)[local]  # once, for both shapings
    contrast = appearance.contrast_hu if flat else _shaped_contrast(appearance, depth, spacing_zyx, rng, config)
    if appearance.margin_mm <= 0:
        return contrast
    width = min(appearance.margin_mm, 0.6 * max(float(depth.max()), 1e-3))
    step = np.clip(depth / width, 0.0, 1.0)
    ramp = appearance.edge_fraction + (1 - appearance.edge_fraction) * step * step * (3 - 2 * step)  # smoothstep
    return contrast * ramp


def _shaped_contrast(appearance: _Appearance, depth: np.ndarray, spacing_zyx, rng, config):
    """HU relative to the liver, shaped by `depth` (mm inside the tumor) for the kinds with an inner structure."""
    kind, contrast = appearance.kind, appearance.contrast_hu
    if kind in ("rim", "capsule", "isodense"):
        width = config.rim_width_mm if kind == "rim" else config.capsule_width_mm
        return contrast + (appearance.rim_hu - contrast) * np.exp(-((depth / width) ** 2))
    if kind in ("necrotic", "target"):  # the centre (deeper than a share of the tumor's depth) takes rim_hu
        share = 0.4 if kind == "necrotic" else config.target_core_fraction
        inner = share * max(float(depth.max()), 1e-3)
        return contrast + (appearance.rim_hu - contrast) / (1 + np.exp(-(depth - inner) / 1.0))
    specks = (rng.random(depth.shape) < 0.01) & (depth > 1.0)  # calcified: about 1 % of the inner voxels
    bright = ndimage.gaussian_filter(specks.astype(np.float32), 0.7 / spacing_zyx) * 4.0
    return contrast + np.minimum(bright, 1.0) * rng.uniform(*config.calcification_hu)


def _mass_effect(ct_box: np.ndarray, shape: _Shape, local, push_mm: float, spacing_zyx, config) -> np.ndarray:
    """Push tissue radially away from the tumor by up to `push_mm`, fading out at the extent margin."""
    if push_mm <= 0:
        return ct_box
    distance = shape.distance_mm[local]
    fade = 0.5 * (1 + np.cos(np.pi * np.minimum(distance / config.mass_effect_extent_mm, 1.0)))
    offsets = [np.broadcast_to(o, shape.core.shape)[local] for o in shape.offsets_mm]
    radius = np.sqrt(sum(o**2 for o in offsets)) + 1e-6
    scale = push_mm * fade / radius
    grid = np.indices(ct_box.shape, dtype=np.float32)
    source = [g - scale * o / s for g, o, s in zip(grid, offsets, spacing_zyx, strict=True)]
    return ndimage.map_coordinates(ct_box, source, order=1, mode="nearest")


def _unit_std(field: np.ndarray) -> np.ndarray:
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to integer CT types so that blending never wraps around."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)
