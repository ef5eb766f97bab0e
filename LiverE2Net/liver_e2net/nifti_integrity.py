"""Truncated NIfTI files: SimpleITK reads them without an error and fills the missing voxels with zeros.

A half-copied .nii.gz would otherwise be segmented as a CT that ends in a block of 0 HU. NRRD and MHA readers do
report short data, so only NIfTI needs this check (it streams the file once; a gzip stream cut short raises).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

# sizeof_hdr -> (dim type, offset), (bitpix type, offset), (vox_offset type, offset): NIfTI-1 and NIfTI-2
NIFTI_HEADERS = {348: ("i2", 40, "i2", 72, "f4", 108), 540: ("i8", 16, "i2", 14, "i8", 168)}


def nifti_problem(path: str | Path) -> str:
    """'' if `path` is not NIfTI or holds all its voxels; else what is missing."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return ""
    opener = gzip.open if name.endswith(".gz") else open
    if opener is gzip.open and _gzip_size_matches(path):
        return ""
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            total = len(header) + sum(len(block) for block in iter(lambda: stream.read(2**22), b""))
    except (OSError, EOFError, zlib.error) as error:
        return f"{path} is damaged or cut short ({type(error).__name__}: {error}); copy it again"
    needed = _needed_bytes(header)
    if needed is not None and total < needed:
        return f"{path} is cut short: {total} bytes of image data and header, {needed} needed; copy it again"
    return ""


def _gzip_size_matches(path: Path) -> bool:
    """Fast path: a whole gzip stream ends with its uncompressed size mod 2**32 (ISIZE). If that equals what the
    header needs, the file is complete (a cut file ends in compressed data, matching by chance 1 in 2**32);
    otherwise the full stream is read to say what is wrong."""
    try:
        with gzip.open(path, "rb") as stream:
            needed = _needed_bytes(stream.read(540))
        with open(path, "rb") as raw:
            raw.seek(-4, 2)
            size = int.from_bytes(raw.read(4), "little")
    except (OSError, EOFError, zlib.error):
        return False
    return needed is not None and size == needed % 2**32


def _needed_bytes(header: bytes) -> int | None:
    """vox_offset + voxels * bytes per voxel from a NIfTI-1 or -2 header (either byte order); None if unknown."""
    for order in ("<", ">"):
        size = int(np.frombuffer(header[:4], order + "i4")[0]) if len(header) >= 4 else 0
        if size in NIFTI_HEADERS and len(header) >= size:
            dim_type, dim_at, bitpix_type, bitpix_at, offset_type, offset_at = NIFTI_HEADERS[size]
            dims = np.frombuffer(header, order + dim_type, 8, dim_at)
            bitpix = int(np.frombuffer(header, order + bitpix_type, 1, bitpix_at)[0])
            offset = int(np.frombuffer(header, order + offset_type, 1, offset_at)[0])
            rank = int(dims[0])
            if not 1 <= rank <= 7 or bitpix <= 0:
                return None
            return max(offset, size) + int(np.prod(dims[1 : rank + 1].astype(np.int64))) * bitpix // 8
    return None
