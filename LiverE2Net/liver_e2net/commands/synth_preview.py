"""`synth-preview`: insert synthetic tumors into a labelled CT and save a PNG grid to judge them by eye."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..extras import require
from ..outputs import write_all
from ..training.real_tumors import MIN_DONOR_ML, donors_from_case
from ..training.synthetic_tumors import TUMOR_KINDS, SyntheticTumorConfig, TumorRecord, insert_tumors

HU_WINDOW = (-100.0, 240.0)
CROP_MARGIN = 15  # voxels around the liver kept in the preview, so small tumors stay visible
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth-preview", help="insert synthetic tumors into a CT and save a before/after PNG"
    )
    parser.add_argument("ct", type=Path, help="CT volume (any SimpleITK format, HU)")
    parser.add_argument("label", type=Path, help="label volume: 0 background, 1 liver, 2 tumor")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--count", type=int, default=None, help="number of tumors (default: 1-3 at random)")
    parser.add_argument(
        "--kind", choices=TUMOR_KINDS, help="draw only this kind of tumor (default: the training mix)"
    )
    parser.add_argument(
        "--bulging",
        action="store_true",
        help="tumors at the liver's outline, bulging out of it where soft tissue lies beside it (training draws "
        "them among its border tumors)",
    )
    parser.add_argument(
        "--real-from",
        nargs=2,
        type=Path,
        metavar=("CT", "LABEL"),
        help="draw copies of this labelled case's real tumors instead (what train --real-tumor-paste paints)",
    )
    parser.add_argument("--slices", type=int, default=3, help="axial slices shown, one per row (default 3)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.slices < 1:
        raise UserInputError(f"--slices must be at least 1, got {args.slices}")
    _check_writable(args.output)
    ct, spacing = _read(args.ct)
    label, _ = _read(args.label)
    config = SyntheticTumorConfig()
    if args.count is not None:
        config = replace(config, count_range=(args.count, args.count))
    if args.kind:
        config = replace(config, kind_weights=tuple(float(kind == args.kind) for kind in TUMOR_KINDS))
    if args.bulging:
        config = replace(config, allow_border=True, exophytic_probability=1.0)
    donors = ()
    if args.real_from:
        donors = _donors(*args.real_from)
        config = replace(config, real_tumor_probability=1.0)
    new_ct, new_label, records = insert_tumors(
        ct, label.astype(np.uint8), spacing, np.random.default_rng(args.seed), config, donors
    )
    for record in records:
        log.info(
            "tumor at (z,y,x)=%s: %.1f mm, %s%s, %+.0f HU, mass effect %.1f mm",
            record.centre,
            record.diameter_mm,
            record.kind,
            ", bulging out of the liver" if record.exophytic else "",
            record.contrast_hu,
            record.mass_effect_mm,
        )
    rows = _pick_slices(records, (new_label == 2) & (label != 2), args.slices)
    _save_grid(args.output, ct, new_ct, new_label, rows)
    log.info("wrote %s (%d tumors, slices %s)", args.output, len(records), rows)
    return 0


def _check_writable(path: Path) -> None:
    """Refuse an unwritable output before the slow part, not after it."""
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserInputError(f"cannot write the preview to {path}: not a writable file path")


def _donors(ct_path: Path, label_path: Path) -> tuple:
    ct, spacing = _read(ct_path)
    label, _ = _read(label_path)
    if ct.shape != label.shape:
        raise UserInputError(f"--real-from: {ct_path} {ct.shape} and {label_path} {label.shape} differ in size")
    donors = tuple(donors_from_case(ct, label, spacing, ct_path.name))
    if not donors:
        raise UserInputError(
            f"--real-from: {label_path} has no tumor (label 2) of {MIN_DONOR_ML:g} ml or more beside liver to copy"
        )
    return donors


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume as a [z, y, x] array with its (x, y, z) spacing; a clear message when unreadable."""
    import SimpleITK as sitk

    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserInputError(f"{path}: cannot be read as an image ({error})") from None
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def _pick_slices(records: list[TumorRecord], synthetic: np.ndarray, count: int) -> list[int]:
    """Each tumor's centre slice first (largest first), then slices spread over the other tumor slices."""
    centres = [r.centre[0] for r in sorted(records, key=lambda r: -r.diameter_mm)]
    chosen = list(dict.fromkeys(centres))[:count]
    others = [z for z in np.flatnonzero(synthetic.any(axis=(1, 2))) if z not in chosen]
    if others and len(chosen) < count:
        picks = np.linspace(0, len(others) - 1, min(count - len(chosen), len(others))).round().astype(int)
        chosen += [int(others[i]) for i in picks]
    return sorted(chosen)


def _save_grid(path: Path, before: np.ndarray, after: np.ndarray, label: np.ndarray, rows: list[int]) -> None:
    """Rows: slices; columns: before, after, after with liver (green) and tumor (red) contours."""
    require("matplotlib", "the synthetic-tumor preview").use("Agg")
    import matplotlib.pyplot as plt

    crop = _liver_crop(label)
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4 * len(rows)), squeeze=False)
    for row, z in zip(axes, rows, strict=True):
        for ax, image, title in zip(
            row, (before, after, after), ("before", "after", "after + labels"), strict=True
        ):
            ax.imshow(image[z][crop], cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
            ax.set_title(f"z={z} {title}")
            ax.axis("off")
        row[2].contour(label[z][crop] >= 1, levels=[0.5], colors="lime", linewidths=0.8)
        row[2].contour(label[z][crop] == 2, levels=[0.5], colors="red", linewidths=0.8)
    fig.tight_layout()
    try:  # all or nothing: a full disk leaves no cut-short PNG behind
        write_all({path: (lambda temporary: fig.savefig(temporary, dpi=100, format="png"), "size")})
    finally:
        plt.close(fig)


def _liver_crop(label: np.ndarray) -> tuple[slice, slice]:
    """In-plane bounding box of the liver, plus a margin."""
    ys = np.flatnonzero(label.any(axis=(0, 2)))
    xs = np.flatnonzero(label.any(axis=(0, 1)))
    return (
        slice(max(ys[0] - CROP_MARGIN, 0), ys[-1] + CROP_MARGIN + 1),
        slice(max(xs[0] - CROP_MARGIN, 0), xs[-1] + CROP_MARGIN + 1),
    )
