"""Time synthetic tumor insertion on case01: a 16-slice 512x512 slab (2.5D loader) and the whole volume.

Usage: .venv/bin/python benchmarks/synthetic_tumors_speed.py [--data /work/shared/data] [--repeats 10]
Prints one line per setting: median, mean and max seconds per call over seeds 0..repeats-1, with the
default SyntheticTumorConfig (1-3 tumors, 3-60 mm).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from liver_e2net.training.synthetic_tumors import insert_tumors, insert_tumors_slab

SLAB_SLICES = 16


def time_calls(insert, ct, label, spacing, repeats: int) -> tuple[list[float], int]:
    """Seconds per call for seeds 0..repeats-1, and the total number of tumors inserted."""
    seconds, tumors = [], 0
    for seed in range(repeats):
        start = time.perf_counter()
        _, _, records = insert(ct, label, spacing, np.random.default_rng(seed))
        seconds.append(time.perf_counter() - start)
        tumors += len(records)
    return seconds, tumors


def report(name: str, shape, seconds: list[float], tumors: int) -> None:
    print(
        f"{name:<28} {'x'.join(map(str, shape)):>13}  median {statistics.median(seconds):.3f} s  "
        f"mean {statistics.mean(seconds):.3f} s  max {max(seconds):.3f} s  ({tumors} tumors / {len(seconds)} calls)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    image = sitk.ReadImage(str(args.data / "case01_ct.nii.gz"))
    ct = sitk.GetArrayFromImage(image)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "case01_label.nii.gz")))
    spacing = image.GetSpacing()
    liver_slices = np.flatnonzero((label >= 1).any(axis=(1, 2)))
    start = int(liver_slices[len(liver_slices) // 2]) - SLAB_SLICES // 2
    slab = slice(start, start + SLAB_SLICES)
    print(f"case01, spacing (x, y, z) {spacing} mm, shapes (z, y, x)")
    report(
        "slab (insert_tumors_slab)",
        ct[slab].shape,
        *time_calls(insert_tumors_slab, ct[slab], label[slab], spacing, args.repeats),
    )
    report("volume (insert_tumors)", ct.shape, *time_calls(insert_tumors, ct, label, spacing, args.repeats))


if __name__ == "__main__":
    main()
