"""benchmarks/yardsticks.py: the painted copies that model decisions are judged on must not move.

A yardstick whose tumors change with the generator's defaults compares models of different days on different
tumors without saying so (it happened twice on 2026-12-03); these are the tumors the recorded decisions saw."""

from __future__ import annotations

import sys

from core_helpers import REPO, shared_case

sys.path.insert(0, str(REPO / "benchmarks"))
import yardsticks  # noqa: E402

R_TUMORS = [  # (diameter mm, kind, contrast HU) per copy, as the decisions in README's Results saw them
    [(7, "target", -16), (23, "target", -16)],
    [(30, "hyperdense", 24), (4, "capsule", -44)],
    [(6, "hyperdense", 21), (18, "necrotic", -36)],
    [(5, "hypodense", -22), (25, "hyperdense", 36)],
    [(28, "hypodense", -68), (5, "hypodense", -76), (6, "hypodense", -71), (8, "necrotic", -49)],
    [(29, "necrotic", -46), (7, "hypodense", -66)],
    [(12, "hypodense", -58), (30, "hypodense", -72), (26, "hypodense", -33)],
    [(17, "target", -8), (15, "isodense", -9)],
]
RB_DIAMETERS = [[7, 7], [28, 10], [7, 21], [10, 16], [35, 25, 16, 5], [30, 31], [23, 23, 24], [17, 34]]


def _tumors(name: str) -> list[list]:
    return [list(records) for _, _, _, records in yardsticks.copies(name, shared_case("case02_ct.nii.gz").parent)]


def test_r_and_rb_paint_the_tumors_the_recorded_decisions_were_judged_on():
    r = _tumors("R")
    assert [[(round(t.diameter_mm), t.kind, round(t.contrast_hu)) for t in copy] for copy in r] == R_TUMORS
    assert all(t.margin_mm == 0 for copy in r for t in copy)  # R: sharp margins, as declared
    assert [[round(t.diameter_mm) for t in copy] for copy in _tumors("RB")] == RB_DIAMETERS


def test_the_arterial_set_holds_hyper_and_hypo_enhancing_tumors():
    groups = [group for _, _, group, _ in yardsticks.copies("arterial", shared_case("case02_ct.nii.gz").parent)]
    assert (groups.count("hyper"), groups.count("hypo")) == (16, 8)
