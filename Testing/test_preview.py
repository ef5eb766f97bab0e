"""The review figure: a real PNG of the CT with the outlines drawn where the label is."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from liver_e2net.preview import _centre_slices, draw_preview


def phantom(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    z, y, x = np.mgrid[:30, :64, :64]
    label = (((y - 32) / 20) ** 2 + ((x - 24) / 16) ** 2 + ((z - 15) / 12) ** 2 <= 1).astype(np.uint8)
    label[((y - 36) ** 2 + (x - 24) ** 2 + (z - 20) ** 2) <= 16] = 2
    ct = sitk.GetImageFromArray(np.where(label >= 1, 100, -50).astype(np.int16))
    ct.SetSpacing((1.5, 1.5, 2.5))
    ct.SetDirection(direction)
    return ct, label


def test_preview_is_a_png_centred_on_the_largest_tumor(tmp_path):
    ct, label = phantom()
    assert _centre_slices(label) == (20, 36)
    path = tmp_path / "case.png"
    draw_preview(ct, label, path, "phantom")
    image = sitk.ReadImage(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.GetSize()[0] > 1000
    pixels = sitk.GetArrayFromImage(image)[..., :3].astype(int)
    tumor_green = (np.abs(pixels - [0x39, 0xB5, 0x4A]).sum(-1) < 40).sum()
    assert tumor_green > 50  # the tumor outline is drawn


def test_preview_of_a_flipped_ct_shows_the_same_anatomy(tmp_path):
    """A RAS-stored CT is reoriented for display: its figure matches the LPS one's."""
    ct, label = phantom()
    flipped = sitk.Flip(ct, (True, True, False))
    flipped_label = sitk.GetArrayFromImage(sitk.Flip(sitk.GetImageFromArray(label), (True, True, False)))
    draw_preview(ct, label, tmp_path / "a.png")
    draw_preview(flipped, flipped_label, tmp_path / "b.png")
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))) for name in ("a.png", "b.png"))
    assert np.abs(a[:, : a.shape[1] * 2 // 3].astype(int) - b[:, : b.shape[1] * 2 // 3]).mean() < 1.0
