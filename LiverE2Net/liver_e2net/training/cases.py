"""Reading one training case, checked, on the network frame: int16 HU and uint8 labels on the native grid.

The network frame and HU handling are inference's (`to_network_frame`), so training slices look exactly like
the slices the pipeline feeds the networks.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import UserInputError
from ..io import Volume, check_ct_values, read_ct
from ..preprocessing import to_network_frame
from .labels import check_has_liver, check_label_values, read_label
from .sources import CasePaths, CaseSource, TrainingCase

INT16 = np.iinfo(np.int16)


def read_case(source: CaseSource) -> tuple[Volume, np.ndarray]:
    """(CT volume with int16 HU, uint8 label array), both [z, y, x] on the network frame."""
    if isinstance(source, CasePaths):
        ct = read_ct(source.image)
        label = read_label(source.label, ct)
    else:
        ct, label = _images_of(source)
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(ct)
    volume, _ = to_network_frame(ct)
    label_volume, _ = to_network_frame(label_image)
    volume.array = np.clip(np.rint(volume.array), INT16.min, INT16.max).astype(np.int16)
    return volume, label_volume.array.astype(np.uint8)


def _images_of(case: TrainingCase) -> tuple[sitk.Image, np.ndarray]:
    ct = np.asarray(case.ct)
    if ct.ndim != 3 or ct.shape != np.shape(case.label):
        raise UserInputError(
            f"case {case.name}: CT shape {ct.shape} and label shape {np.shape(case.label)} "
            "must be the same 3D [z, y, x] shape"
        )
    if len(case.spacing) != 3 or min(case.spacing) <= 0:
        raise UserInputError(
            f"case {case.name}: spacing {case.spacing} must be three positive (x, y, z) values"
        )
    check_ct_values(ct, f"case {case.name} CT")
    label = check_label_values(np.asarray(case.label), f"case {case.name} label")
    check_has_liver(label, f"case {case.name} label")
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing(tuple(float(s) for s in case.spacing))
    image.SetOrigin(tuple(float(o) for o in case.origin))
    image.SetDirection(tuple(float(d) for d in case.direction))
    return image, label
