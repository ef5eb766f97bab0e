"""A whole batch on this process's share: plan (reuse what is complete), run the rest, merge the rows.

The same code runs alone, as one torchrun rank among many, or inside a Ray actor; only who calls `run_share`
with which cases differs.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..progress import Reporter, null_reporter
from .discovery import Case, Discovery
from .runner import BatchOptions, check_complete, read_record, run_case
from .table import case_row, skipped_row

log = logging.getLogger("liver_e2net")


@dataclass(frozen=True)
class Plan:
    reusable: tuple[Case, ...]
    pending: tuple[Case, ...]


def prepare_outdir(path: Path) -> Path:
    """Creates the batch folder and proves it writable before any work (a read-only or missing disk fails here)."""
    if path.exists() and not path.is_dir():
        raise UserInputError(f"output {path} is a file; give a folder for the batch outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserInputError(
            f"cannot write the batch folder {path}: {error.strerror}; choose a writable disk"
        ) from error
    return path


def earlier_models(outdir: Path, fingerprint: str) -> dict[str, list[str]]:
    """{model: [cases]} of finished cases in `outdir` made by a model other than `fingerprint`."""
    found: dict[str, list[str]] = defaultdict(list)
    for folder in sorted(p for p in outdir.iterdir() if p.is_dir()):
        record = read_record(folder)
        model = (record or {}).get("model") or {}
        if record and record.get("status") == "done" and model.get("fingerprint") != fingerprint:
            found[f"{model.get('name') or 'model'} (fingerprint {model.get('fingerprint')})"].append(
                folder.name
            )
    return dict(found)


def refuse_mixed_models(outdir: Path, model: dict[str, Any], force: bool) -> None:
    """One batch folder, one model: a cohort table mixing models would compare unlike measurements."""
    others = earlier_models(outdir, model["fingerprint"])
    if not others:
        return
    listing = "; ".join(
        f"{name}: {len(cases)} case(s), e.g. {', '.join(cases[:3])}" for name, cases in others.items()
    )
    if not force:
        raise UserInputError(
            f"{outdir} holds cases segmented with another model ({listing}); this run uses "
            f"{model.get('name') or 'model'} (fingerprint {model['fingerprint']}). Use a new output "
            "folder, or --force to recompute those cases with this model"
        )
    log.warning(
        "--force: cases made with another model (%s) are recomputed when they are among the inputs", listing
    )


def plan(cases: tuple[Case, ...], outdir: Path, options: BatchOptions, fingerprint: str) -> Plan:
    reusable, pending = [], []
    for case in cases:
        complete, why = check_complete(case, outdir / case.name, options, fingerprint)
        (reusable if complete else pending).append(case)
        if not complete and why != "no complete record":
            log.info("%s: recomputed (%s)", case.name, why)
    return Plan(tuple(reusable), tuple(pending))


def run_share(
    cases: list[Case],
    segmenter,
    options: BatchOptions,
    outdir: Path,
    model: dict[str, Any],
    progress: Reporter = null_reporter,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Runs `cases` one after the other (the model stays loaded); progress fractions span this share.
    `extra` (e.g. rank=1) goes into every progress line and case record."""
    records = []
    process = {"host": socket.gethostname(), "pid": os.getpid(), **extra}
    for index, case in enumerate(cases):
        reporter = _case_reporter(progress, index, len(cases), case.name, extra)
        record = run_case(case, segmenter, options, outdir, model, reporter, process)
        records.append(record)
        outcome = (
            f"liver {record['liver_ml']:.1f} ml, tumor {record['tumor_ml']:.1f} ml, "
            f"{record['lesion_count']} lesions in {record['seconds']['case']:.1f} s"
            if record["status"] == "done"
            else f"failed: {record['error']}"
        )
        log.info("[%d/%d] %s: %s", index + 1, len(cases), case.name, outcome)
        progress(
            "case",
            (index + 1) / len(cases),
            f"{case.name}: {record['status']}",
            case=case.name,
            status=record["status"],
            index=index + 1,
            total=len(cases),
            **extra,
        )
    return records


def _case_reporter(progress: Reporter, index: int, total: int, name: str, extra: dict[str, Any]) -> Reporter:
    def report(stage: str, fraction: float, message: str = "", **more: Any) -> None:
        progress(
            stage,
            (index + fraction) / total,
            f"[{index + 1}/{total}] {name}: {message}",
            case=name,
            index=index + 1,  # the case in work (1-based): readers take it from here, not from the message
            total=total,
            **extra,
            **more,
        )

    return report


def merge_rows(
    discovery: Discovery, outdir: Path, reusable: tuple[Case, ...], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Rows in discovery order: cases computed now, cases reused from their records, then skipped inputs."""
    computed = {record["case"]: record for record in records}
    reused = {case.name for case in reusable}
    rows = []
    for case in discovery.cases:
        if case.name in computed:
            rows.append(case_row(computed[case.name]))
        elif case.name in reused:
            rows.append(case_row(read_record(outdir / case.name) or _lost(case), reused=True))
        else:
            rows.append(case_row(_lost(case)))
    return rows + [skipped_row(item) for item in discovery.skipped]


def _lost(case: Case) -> dict[str, Any]:
    return {
        "case": case.name,
        "source": case.source,
        "series_uid": case.series_uid,
        "status": "failed",
        "error": "no result came back for this case (its process stopped?); rerun to compute it",
    }
