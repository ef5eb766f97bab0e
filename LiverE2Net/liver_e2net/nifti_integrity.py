"""NIfTI files checked before SimpleITK reads them, because its reader hides three faults without a word:
a cut-short file (the missing voxels become zeros), NaN/Inf voxels (read as 0) and a zero, NaN or negative voxel
size in the header (read as 1 mm, or the image flipped). NRRD and MHA readers report short data and keep NaN, so
only NIfTI needs this (float files and cut files are streamed once; a gzip stream cut short raises).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# sizeof_hdr -> offsets and types of dim, datatype, bitpix, pixdim and vox_offset: NIfTI-1 and NIfTI-2
NIFTI_LAYOUTS = {
    348: {
        "dim": ("i2", 40),
        "datatype": ("i2", 70),
        "bitpix": ("i2", 72),
        "pixdim": ("f4", 76),
        "offset": ("f4", 108),
    },
    540: {
        "dim": ("i8", 16),
        "datatype": ("i2", 12),
        "bitpix": ("i2", 14),
        "pixdim": ("f8", 104),
        "offset": ("i8", 168),
    },
}
FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of the voxel types that can hold NaN/Inf
CHUNK_BYTES = 2**22


@dataclass(frozen=True)
class NiftiHeader:
    byte_order: str
    dims: tuple[int, ...]  # dim[1..rank]
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]  # pixdim[1..min(rank, 3)]
    data_offset: int

    @property
    def needed_bytes(self) -> int:
        return self.data_offset + int(np.prod(np.asarray(self.dims, np.int64))) * self.bitpix // 8

    @property
    def slice_voxels(self) -> int:
        return int(np.prod(self.dims[:2]))


def nifti_problem(path: str | Path, check_values: bool = True) -> str:
    """'' if `path` is not NIfTI, or is whole, finite and has a usable voxel size; else what is wrong.
    `check_values=False` skips the NaN/Inf scan: a file this process just wrote needs only the completeness check."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return ""
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = parse_header(stream.read(540))
    except (OSError, EOFError, zlib.error) as error:
        return _damaged(path, error)
    if header is None:
        return ""  # not a header this module understands: SimpleITK says what is wrong
    return _pixdim_problem(path, header) or _data_problem(path, header, opener, check_values)


def parse_header(raw: bytes) -> NiftiHeader | None:
    """A NIfTI-1 or -2 header (either byte order); None if `raw` is not one."""
    for order in ("<", ">"):
        size = int(np.frombuffer(raw[:4], order + "i4")[0]) if len(raw) >= 4 else 0
        if size in NIFTI_LAYOUTS and len(raw) >= size:
            return _header_fields(raw, order, NIFTI_LAYOUTS[size], size)
    return None


def _header_fields(raw: bytes, order: str, layout: dict, size: int) -> NiftiHeader | None:
    def field(key: str, count: int = 1) -> np.ndarray:
        kind, offset = layout[key]
        return np.frombuffer(raw, order + kind, count, offset)

    dim, bitpix = field("dim", 8), int(field("bitpix")[0])
    rank = int(dim[0])
    if not 1 <= rank <= 7 or bitpix <= 0:
        return None
    return NiftiHeader(
        byte_order=order,
        dims=tuple(int(d) for d in dim[1 : rank + 1]),
        datatype=int(field("datatype")[0]),
        bitpix=bitpix,
        pixdim=tuple(float(p) for p in field("pixdim", 8)[1 : min(rank, 3) + 1]),
        data_offset=max(int(field("offset")[0]), size),
    )


def _pixdim_problem(path: Path, header: NiftiHeader) -> str:
    bad = [p for p in header.pixdim if not np.isfinite(p) or p <= 0]
    if not bad:
        return ""
    sizes = " x ".join(f"{p:g}" for p in header.pixdim)
    effect = "flip the image" if all(np.isfinite(p) and p < 0 for p in bad) else "read it as 1 mm"
    return (
        f"{path} has an unusable voxel size in its header (pixdim {sizes} mm; SimpleITK would {effect}): "
        "write the file again with the true voxel size (from the scanner's DICOM) before segmenting"
    )


def _data_problem(path: Path, header: NiftiHeader, opener, check_values: bool = True) -> str:
    """Streams the voxels only when needed: float voxels (NaN/Inf) or a gzip file whose size does not match."""
    float_type = FLOAT_TYPES.get(header.datatype) if check_values else None
    if float_type is None:
        if opener is open:
            total = path.stat().st_size
            return _cut_short(path, total, header.needed_bytes) if total < header.needed_bytes else ""
        if _gzip_size_matches(path, header.needed_bytes):
            return ""
    try:
        with opener(path, "rb") as stream:
            total, per_slice = _scan(stream, header, float_type)
    except (OSError, EOFError, zlib.error) as error:
        return _damaged(path, error)
    if total < header.needed_bytes:
        return _cut_short(path, total, header.needed_bytes)
    return nonfinite_message(str(path), per_slice, header.dims[2] if len(header.dims) > 2 else 1)


def _scan(stream, header: NiftiHeader, float_type: str | None) -> tuple[int, np.ndarray]:
    """(bytes read, NaN/Inf count per 2D slice, all volumes one after the other) in one pass over the file."""
    total = len(stream.read(header.data_offset))
    if float_type is None:
        return total + sum(len(block) for block in iter(lambda: stream.read(CHUNK_BYTES), b"")), np.zeros(0)
    dtype = np.dtype(header.byte_order + float_type)
    slice_bytes = header.slice_voxels * dtype.itemsize
    counts = []
    for block in iter(lambda: stream.read(max(1, CHUNK_BYTES // slice_bytes) * slice_bytes), b""):
        total += len(block)
        whole = len(block) // slice_bytes * header.slice_voxels
        values = np.frombuffer(block, dtype, whole).reshape(-1, header.slice_voxels)
        counts.append((~np.isfinite(values)).sum(axis=1))
    return total, np.concatenate(counts) if counts else np.zeros(0)


def nonfinite_message(name: str, per_slice: np.ndarray, depth: int) -> str:
    """'' if no slice holds NaN/Inf; else how many, in which slices (z of a [.., z, y, x] stack of `depth` slices),
    and what to do. Shared with io.check_ct_values, which sees arrays SimpleITK read (NRRD, MHA, DICOM)."""
    slices = np.flatnonzero(per_slice)
    if slices.size == 0:
        return ""
    z = np.unique(slices % max(depth, 1))
    count = int(per_slice.sum())
    where = f"slice z = {z[0]}" if z.size == 1 else f"{z.size} slices between z = {z[0]} and z = {z[-1]}"
    return (
        f"{name} holds {count} voxel(s) that are not numbers (NaN or infinite), in {where} (z counted from 0): "
        "a CT needs a value in HU at every voxel. Fill them (e.g. with -1024, air) or export the CT again"
    )


def _gzip_size_matches(path: Path, needed: int) -> bool:
    """Fast path: a whole gzip stream ends with its uncompressed size mod 2**32 (ISIZE). If that equals what the
    header needs, the file is complete (a cut file ends in compressed data, matching by chance 1 in 2**32);
    otherwise the full stream is read to say what is wrong."""
    try:
        with open(path, "rb") as raw:
            raw.seek(-4, 2)
            size = int.from_bytes(raw.read(4), "little")
    except OSError:
        return False
    return size == needed % 2**32


def _cut_short(path: Path, total: int, needed: int) -> str:
    return f"{path} is cut short: {total} bytes of image data and header, {needed} needed; copy it again"


def _damaged(path: Path, error: Exception) -> str:
    return f"{path} is damaged or cut short ({type(error).__name__}: {error}); copy it again"
