"""Preprocess each case once into memory-mapped .npy files, so an epoch costs network compute, not file decoding.

A case's entry is keyed by a hash of its source (path + modification time + size of every file, or the array
bytes for in-memory cases), so an edited file is re-read and an unchanged one never is. The .json written last
marks a complete entry; all writes are atomic, so concurrent runs may share a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..preprocessing import Box, bounding_box
from .cases import read_case
from .sources import CasePaths, CaseSource

log = logging.getLogger("liver_e2net.training")

CACHE_VERSION = 1


@dataclass
class CachedCase:
    """A preprocessed case: [z, y, x] int16 HU and uint8 labels on the network frame, native grid."""

    name: str
    folder: Path
    key: str
    spacing: tuple[float, float, float]  # (x, y, z) mm
    shape: tuple[int, int, int]  # (z, y, x)
    liver_box: Box  # ground-truth liver (label >= 1), no margin
    tumor_slices: tuple[int, ...]  # z indices holding label 2
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def ct(self) -> np.ndarray:
        return self._array("ct")

    @property
    def label(self) -> np.ndarray:
        return self._array("label")

    def _array(self, kind: str) -> np.ndarray:
        # Opened lazily, so each data-loader worker maps the file itself instead of receiving a pickled copy.
        if kind not in self._arrays:
            self._arrays[kind] = np.load(self.folder / f"{self.key}.{kind}.npy", mmap_mode="r")
        return self._arrays[kind]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}


def prepare_usable_cases(
    sources: list[CaseSource], folder: str | Path
) -> tuple[list[CachedCase], dict[str, str]]:
    """Cached cases for the sources that pass their checks, and {case name: why it was left out} for the others.

    One bad case (no liver, labels outside 0/1/2, CT and label on different grids, values that are not HU)
    should not cost a long run its other cases: it is named with its reason, and training goes on without it.
    """
    cases, skipped = [], {}
    for source in sources:
        try:
            cases += prepare_cases([source], folder)
        except UserInputError as error:
            if "cache folder" in str(error):  # the cache itself, not the case: nothing else will work either
                raise
            skipped[source.name] = str(error)
    return cases, skipped


def prepare_cases(sources: list[CaseSource], folder: str | Path, build: bool = True) -> list[CachedCase]:
    """Cached cases for `sources`, reading and checking those not cached yet (only when `build`)."""
    folder = Path(folder)
    if build:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserInputError(
                f"cannot create the cache folder {folder}: {error.strerror}; pass --cache DIR"
            ) from error
    cases = []
    for source in sources:
        key = cache_key(source)
        meta_path = folder / f"{key}.json"
        if not meta_path.exists():
            if not build:
                raise RuntimeError(f"cache entry {meta_path} for case {source.name} is missing")
            _write_entry(source, folder, key)
        meta = json.loads(meta_path.read_text())
        cases.append(
            CachedCase(
                source.name,
                folder,
                key,
                tuple(meta["spacing"]),
                tuple(meta["shape"]),
                Box(*meta["liver_box"]),
                tuple(meta["tumor_slices"]),
            )
        )
    return cases


def cache_key(source: CaseSource) -> str:
    digest = hashlib.sha256(f"liver-e2net cache v{CACHE_VERSION}".encode())
    if isinstance(source, CasePaths):
        for path in (source.image, source.label):
            files = (
                sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            )  # DICOM folder
            for file in files:
                stat = file.stat()
                digest.update(f"{file.resolve()}|{stat.st_mtime_ns}|{stat.st_size}\n".encode())
    else:
        for array in (source.ct, source.label):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.data)
        digest.update(repr((tuple(source.spacing), tuple(source.origin), tuple(source.direction))).encode())
    return digest.hexdigest()[:32]


def _write_entry(source: CaseSource, folder: Path, key: str) -> None:
    start = time.perf_counter()
    volume, label = read_case(source)
    liver_box = bounding_box(label >= 1, (0, 0), 0)
    tumor_slices = np.flatnonzero((label == 2).any(axis=(1, 2)))
    try:
        _save_atomic(folder / f"{key}.ct.npy", volume.array)
        _save_atomic(folder / f"{key}.label.npy", label)
        meta = {
            "version": CACHE_VERSION,
            "source": _describe(source),
            "spacing": list(volume.spacing),
            "shape": list(label.shape),
            "tumor_slices": tumor_slices.tolist(),
            "liver_box": [liver_box.z0, liver_box.z1, liver_box.y0, liver_box.y1, liver_box.x0, liver_box.x1],
        }
        _save_atomic(folder / f"{key}.json", json.dumps(meta, indent=1).encode())
    except OSError as error:
        raise UserInputError(
            f"cannot write to the cache folder {folder}: {error.strerror}; pass --cache DIR"
        ) from error
    log.info(
        "cached %s: %s voxels (z, y, x), spacing %s mm, %d tumor slices (%.1f s)",
        source.name,
        "x".join(map(str, label.shape)),
        "x".join(f"{s:.3g}" for s in volume.spacing),
        len(tumor_slices),
        time.perf_counter() - start,
    )


def _describe(source: CaseSource) -> str:
    return (
        f"{source.image} + {source.label}"
        if isinstance(source, CasePaths)
        else f"arrays of case {source.name}"
    )


def _save_atomic(path: Path, content: np.ndarray | bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            if isinstance(content, bytes):
                stream.write(content)
            else:
                np.save(stream, content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
