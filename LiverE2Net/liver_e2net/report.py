"""The per-case report: volumes, burden and lesion table of a label map, as JSON-ready data."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import SimpleITK as sitk

from .metrics import lesion_table


def case_report(label: np.ndarray, ct: sitk.Image) -> dict[str, Any]:
    """label [z, y, x] on the CT's grid -> liver/tumor ml, burden % and one row per 3D tumor component."""
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    liver_voxels, tumor_voxels = int((label >= 1).sum()), int((label == 2).sum())
    lesions = lesion_table(
        label, sitk.GetArrayViewFromImage(ct), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection()
    )
    return {
        "liver_ml": round(liver_voxels * voxel_ml, 2),
        "tumor_ml": round(tumor_voxels * voxel_ml, 2),
        "tumor_burden_percent": round(100.0 * tumor_voxels / liver_voxels, 3) if liver_voxels else 0.0,
        "lesions": [dataclasses.asdict(row) for row in lesions],
    }
