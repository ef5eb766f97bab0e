"""One case of a batch: read, segment, write every output atomically, then `case.json` last.

`case.json` is the completion record: it lists each output with its size and SHA-256, the model fingerprint,
the options and a signature of the input. A rerun trusts a case only if all of that still checks out, so a killed
job loses at most the case in flight, and a changed input, option or model is recomputed rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .. import __version__
from ..checkpoint import weights_fingerprint
from ..errors import UserInputError
from ..fp_filter import TREE_ARRAYS
from ..io import atomic_output, read_ct, read_ct_series
from ..outputs import (
    OutputSet,
    OutputTargets,
    check_numbers,
    model_summary,
    report_fields,
    sha256,
    write_case_outputs,
)
from ..progress import Reporter, null_reporter
from ..protocol import CASE_RECORD, LABEL_FILES, PREVIEW_FILE, PROBABILITY_FILE
from .discovery import Case

log = logging.getLogger("liver_e2net")

RECORD_VERSION = 1
CASE_JSON = CASE_RECORD
MIN_FREE_BYTES = 100 * 2**20  # below this a case is not started: it would fail at the write, after the work


@dataclass(frozen=True)
class BatchOptions:
    """Everything that changes a case's outputs; a stored case is reused only under the same options."""

    formats: tuple[str, ...] = ("nifti",)
    tumors: bool = True
    min_lesion_ml: float | None = None  # None: the model's own (segment --min-lesion-ml)
    probabilities: bool = False
    stl: bool = False
    smoothing: float = 1.0
    tta: str = "none"  # test-time augmentation mode of `segment --tta`
    tta_scales: tuple[float, ...] | None = None  # used by --tta multiscale; None: the model's own
    preview: bool = False  # the review PNG in the case folder
    precision: str = "auto"  # segment --precision

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in LABEL_FILES]
        if unknown or not self.formats:
            raise UserInputError(
                f"unknown --format {', '.join(unknown) or '(none)'}; choose from {', '.join(LABEL_FILES)}"
            )
        check_numbers(tta_scales=self.tta_scales or (), smoothing=self.smoothing, min_lesion_ml=self.min_lesion_ml)
        self.test_time_augmentation()  # refuses an unknown mode

    def test_time_augmentation(self):
        from ..pipeline import TestTimeAugmentation

        return TestTimeAugmentation.from_mode(self.tta, self.tta_scales)


def model_fingerprint(checkpoint) -> str:
    """SHA-256 (16 hex digits) of the config and every weight: the same model gives the same fingerprint
    whatever its file name, and any retraining changes it."""
    digest = hashlib.sha256(json.dumps(checkpoint.config.to_dict(), sort_keys=True).encode())
    for state in (checkpoint.stage1, checkpoint.stage2):
        digest.update(weights_fingerprint(state).encode())
    if getattr(checkpoint, "fp_filter", None) is not None:  # filtered output differs: it is another model
        payload = checkpoint.fp_filter.to_payload()
        digest.update(f"fp_filter:{payload['decision_threshold']}".encode())
        for key in TREE_ARRAYS:
            digest.update(payload[key].numpy().tobytes())
    return digest.hexdigest()[:16]


def model_info(checkpoint) -> dict[str, Any]:
    """What `segment --report` says about the model, plus the fingerprint that resume and --force check."""
    return {**model_summary(checkpoint), "fingerprint": model_fingerprint(checkpoint)}


def source_signature(case: Case) -> dict[str, Any]:
    """Number, total size and newest modification time of the input files (not their path: a moved folder
    still resumes, an edited or replaced file does not)."""
    stats = [Path(f).stat() for f in case.files if Path(f).exists()]
    return {
        "series_uid": case.series_uid,
        "files": len(stats),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / CASE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_complete(case: Case, folder: Path, options: BatchOptions, fingerprint: str) -> tuple[bool, str]:
    """(reusable, why not): the stored record must be done, for this input, options and model, and every output
    it lists must exist with the recorded size and SHA-256."""
    record = read_record(folder)
    if record is None:
        return False, "no complete record"
    expected = {
        "record_version": RECORD_VERSION,
        "status": "done",
        "options": asdict(options),
        "source_signature": source_signature(case),
    }
    for key, value in expected.items():
        if _jsonable(record.get(key)) != _jsonable(value):
            return False, f"{key} changed"
    if record.get("model", {}).get("fingerprint") != fingerprint:
        return False, "made with another model"
    for entry in record.get("outputs", {}).values():
        path = folder / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            return False, f"{entry['path']} missing or altered"
    return True, ""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def read_case(case: Case) -> sitk.Image:
    """The CT of a case, read and refused as `segment` reads and refuses it (io.read_ct, io.read_ct_series)."""
    if case.problem:
        raise UserInputError(case.problem)
    return read_ct_series(case.files, case.source, case.notes) if case.is_dicom else read_ct(case.files[0])


def slice_count(case: Case) -> int:
    """The cost of a case for sharding, from headers only (both stages run slice by slice); 1 if unreadable."""
    if case.is_dicom:
        return len(case.files)
    reader = sitk.ImageFileReader()
    reader.SetFileName(case.files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 1
    size = reader.GetSize()
    return int(size[2]) if len(size) > 2 else 1


def run_case(
    case: Case,
    segmenter,
    options: BatchOptions,
    outdir: Path,
    model: dict[str, Any],
    progress: Reporter = null_reporter,
    process: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segments one case into outdir/<name>/; any failure becomes a 'failed' record instead of an exception.
    `process` (rank, host, ...) is stored as is: which worker made the case."""
    folder = outdir / case.name
    start = time.perf_counter()
    record: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "case": case.name,
        "source": case.source,
        "series_uid": case.series_uid,
        "source_signature": source_signature(case),
        "options": asdict(options),
        "model": model,
        "liver_e2net": __version__,
        "process": process or {},
    }
    try:
        clear_case_folder(folder)
        if "dicom-seg" in options.formats and not case.is_dicom:
            raise UserInputError(
                "--format dicom-seg needs DICOM input (a DICOM SEG references its CT images); "
                f"{case.source} is a volume file"
            )
        check_free_space(outdir)
        progress("read", 0.0, "reading")
        ct = read_case(case)
        seconds = {"read": time.perf_counter() - start}
        result = segmenter.segment(
            ct,
            tumors=options.tumors,
            probabilities=options.probabilities,
            min_lesion_ml=options.min_lesion_ml,
            progress=progress,
        )
        result.seconds = {
            **seconds,
            **result.seconds,
            "case": time.perf_counter() - start,
        }  # before the write
        progress("write", 0.92, "writing")
        done = (
            record
            | report_fields(case.source, segmenter, result, ct, options.tta, model)
            | {"status": "done"}
        )
        done["lesion_count"] = len(done["lesions"])
        done["outputs"] = write_outputs(case, result, ct, folder, options, done)
        return done
    except Exception as error:  # one bad case never stops the batch: it is recorded and the batch goes on
        message = str(error) if isinstance(error, UserInputError) else f"{type(error).__name__}: {error}"
        log.debug("case %s failed:\n%s", case.name, traceback.format_exc())
        record |= {
            "status": "failed",
            "error": message,
            "seconds": {"case": round(time.perf_counter() - start, 3)},
        }
    try:
        with atomic_output(folder / CASE_JSON) as temporary:
            temporary.write_text(json.dumps(record, indent=2))
    except (OSError, UserInputError) as error:
        record |= {
            "status": "failed",
            "error": f"{record.get('error') or 'done'}; its record could not be written: {error}",
        }
    return record


def clear_case_folder(folder: Path) -> None:
    """Drops the old record first (so a half-rewritten case never looks complete) and temporary files left by a
    killed run (atomic_output names them '.<name>.*')."""
    (folder / CASE_JSON).unlink(missing_ok=True)
    if folder.is_dir():
        for stale in folder.rglob(".*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)


def check_free_space(outdir: Path) -> None:
    free = shutil.disk_usage(outdir).free
    if free < MIN_FREE_BYTES:
        raise UserInputError(
            f"only {free / 2**20:.0f} MiB free on the disk of {outdir}: case not started; free some "
            "space and rerun (finished cases are kept)"
        )


def write_outputs(
    case: Case, result, ct: sitk.Image, folder: Path, options: BatchOptions, record: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every output of the case and case.json (the report, listing them) as one all-or-nothing set."""
    targets = OutputTargets(
        {kind: folder / LABEL_FILES[kind] for kind in options.formats},
        probabilities=folder / PROBABILITY_FILE if options.probabilities else None,
        stl=folder / "stl" if options.stl else None,
        report=folder / CASE_JSON,
        preview=folder / PREVIEW_FILE if options.preview else None,
        smoothing=options.smoothing,
        base=folder,
    )
    name = f"{record['model'].get('name') or 'model'} {record['model']['fingerprint']}"
    with OutputSet(targets.files().values()) as outputs:
        return write_case_outputs(outputs, targets, result, ct, record, dicom=(list(case.files), name))
