"""Held-out tumor yardsticks: painted copies of case02 (never trained on), each segmented whole, Fast.

    python benchmarks/yardsticks.py --set R [--set K ...] [--filter on|off] MODEL [MODEL ...]

Sets (each copy's tumors are fixed by its seed, so models of different days are judged on the same copies):
  R         8 copies with 2-5 tumors of 4-30 mm of every kind, some at the border (19 tumors)
  RB        the same draws, every border tumor bulging out beside tissue of the liver's density
  RG        the same draws, every hypo-, hyper- and necrotic tumor with a fading margin
  K         one tumor per copy: each kind at 10 and 20 mm, 4 seeds (64 copies): lesions found per kind
  arterial  one 10 or 20 mm tumor per copy, then the whole CT moved to the arterial phase (24 copies):
            16 end up brighter than the liver (as HCC does), 8 darker
Prints one JSON line per model and set: liver and tumor Dice over all copies, lesions found (Chlebus, Dice > 0.2),
false lesions per copy, and lesions found per group (kind, or hyper / hypo).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from liver_e2net.metrics import chlebus_detection
from liver_e2net.pipeline import Segmenter
from liver_e2net.robustness import trial_tumor_config
from liver_e2net.training.augment import simulate_phase
from liver_e2net.training.synthetic_tumors import TUMOR_KINDS, SyntheticTumorConfig, insert_tumors

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Every option the generator has gained since a set was declared is spelled out at the value the set was
# declared with, so that a new default cannot change a set's tumors (it did once: robustness, 2026-12-03).
FROZEN = dict(graded_margin_probability=0.0, exophytic_probability=0.3, organ_bulge_share=0.5)
RICH = SyntheticTumorConfig(count_range=(2, 5), size_class_weights=(0.1, 0.3, 0.3, 0.3), allow_border=True, **FROZEN)
SETS = {
    "R": RICH,
    "RB": replace(RICH, graded_margin_probability=0.5, exophytic_probability=1.0, organ_bulge_share=1.0),
    "RG": replace(RICH, graded_margin_probability=1.0),
}


def one_tumor(kind: str, diameter_mm: float) -> SyntheticTumorConfig:
    return trial_tumor_config(diameter_mm, tuple(float(k == kind) for k in TUMOR_KINDS))


def copies(name: str, data: Path = DATA) -> Iterator[tuple[sitk.Image, np.ndarray, str, list]]:
    """(painted CT, its label, group, tumor records) for each copy of set `name`."""
    ct = sitk.ReadImage(str(data / "case02_ct.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "case02_label.nii.gz")))
    array = sitk.GetArrayFromImage(ct)

    def image(values: np.ndarray) -> sitk.Image:
        painted = sitk.GetImageFromArray(values)
        painted.CopyInformation(ct)
        return painted

    if name in SETS:
        for seed in range(8):
            painted, new_label, records = insert_tumors(array, label, ct.GetSpacing(), np.random.default_rng([seed, 9]), SETS[name])
            yield image(painted), new_label, "all", records
    elif name == "K":
        for kind in TUMOR_KINDS:
            for diameter in (10.0, 20.0):
                for seed in range(10, 14):
                    painted, new_label, records = insert_tumors(
                        array, label, ct.GetSpacing(), np.random.default_rng(seed), one_tumor(kind, diameter)
                    )
                    yield image(painted), new_label, kind, records
    elif name == "arterial":
        for diameter in (10.0, 20.0):
            for seed in range(20, 32):
                painted, new_label, records = insert_tumors(
                    array, label, ct.GetSpacing(), np.random.default_rng(seed), one_tumor("hypodense", diameter)
                )
                moved = simulate_phase(painted, new_label, "arterial", np.random.default_rng(seed + 100))
                brighter = np.median(moved[new_label == 2]) > np.median(moved[new_label == 1])
                yield image(np.round(moved).astype(np.int16)), new_label, "hyper" if brighter else "hypo", records
    else:
        raise SystemExit(f"unknown set {name!r}: use one of R, RB, RG, K, arterial")


def score(model: str, name: str, fp_filter: str) -> dict:
    segmenter = Segmenter(model, fp_filter=fp_filter)
    counts = np.zeros(6)  # liver tp, fp, fn; tumor tp, fp, fn
    found, total, false, n = {}, {}, 0, 0
    for painted, reference, group, _ in copies(name):
        predicted = segmenter.segment(painted).label
        for k, (p, r) in enumerate(((predicted >= 1, reference >= 1), (predicted == 2, reference == 2))):
            counts[3 * k : 3 * k + 3] += [(p & r).sum(), (p & ~r).sum(), (~p & r).sum()]
        detection = chlebus_detection(predicted == 2, reference == 2, painted.GetSpacing())
        found[group] = found.get(group, 0) + detection.tp
        total[group] = total.get(group, 0) + detection.n_ref
        false, n = false + detection.fp, n + 1
    liver = 2 * counts[0] / (2 * counts[0] + counts[1] + counts[2])
    tumor = 2 * counts[3] / (2 * counts[3] + counts[4] + counts[5])
    return {
        "model": model, "set": name, "filter": fp_filter, "liver": round(liver, 4), "tumor": round(tumor, 4),
        "score": round(liver + tumor, 4), "lesions": f"{sum(found.values())}/{sum(total.values())}",
        "false_per_copy": round(false / n, 2), "found": {g: f"{found[g]}/{total[g]}" for g in found},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--set", action="append", dest="sets", choices=("R", "RB", "RG", "K", "arterial"))
    parser.add_argument("--filter", default="off", choices=("on", "off"), help="the model's FP filter (default off)")
    args = parser.parse_args()
    for name in args.sets or ["R"]:
        for model in args.models:
            print(json.dumps(score(model, name, args.filter)), flush=True)


if __name__ == "__main__":
    main()
