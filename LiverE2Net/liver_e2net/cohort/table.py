"""The cohort table: one row per case (done, failed or skipped) as `cohort.csv`, and a console summary."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from ..io import atomic_output
from .dicom_tree import Rejected
from .runner import CASE_JSON

COLUMNS = (
    "case",
    "status",
    "reused",
    "source",
    "series_uid",
    "liver_ml",
    "tumor_ml",
    "tumor_burden_percent",
    "lesion_count",
    "largest_lesion_ml",
    "seconds",
    "model",
    "outputs",
    "message",
)


def case_row(record: dict[str, Any], reused: bool = False) -> dict[str, Any]:
    """A case record (case.json) -> a table row; output paths relative to the batch folder."""
    done = record.get("status") == "done"
    lesions = record.get("lesions") or []
    outputs = [f"{record['case']}/{entry['path']}" for entry in record.get("outputs", {}).values()]
    model = record.get("model") or {}
    return {
        "case": record["case"],
        "status": record.get("status", "failed"),
        "reused": "yes" if reused else "no",
        "source": record.get("source", ""),
        "series_uid": record.get("series_uid", ""),
        "liver_ml": record.get("liver_ml", "") if done else "",
        "tumor_ml": record.get("tumor_ml", "") if done else "",
        "tumor_burden_percent": record.get("tumor_burden_percent", "") if done else "",
        "lesion_count": record.get("lesion_count", "") if done else "",
        "largest_lesion_ml": max((row["volume_ml"] for row in lesions), default=0.0) if done else "",
        "seconds": record.get("seconds", {}).get("case", ""),
        "model": f"{model.get('name') or 'model'} {model.get('fingerprint', '')}".strip(),
        "outputs": ";".join([f"{record['case']}/{CASE_JSON}", *outputs]) if done else "",
        "message": "; ".join(record.get("warnings", [])) if done else record.get("error", ""),
    }


def skipped_row(rejected: Rejected) -> dict[str, Any]:
    return {
        **dict.fromkeys(COLUMNS, ""),
        "case": "",
        "status": "skipped",
        "reused": "no",
        "source": rejected.source,
        "message": rejected.reason,
    }


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return path


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def counts_line(rows: list[dict[str, Any]]) -> str:
    counts = Counter(row["status"] for row in rows)
    reused = sum(row["reused"] == "yes" for row in rows)
    return (
        f"{counts['done']} done ({reused} reused from an earlier run), {counts['failed']} failed, "
        f"{counts['skipped']} skipped"
    )


def summary_text(rows: list[dict[str, Any]], width: int | None = None) -> str:
    """Aligned table for the terminal: the measurements of done cases, the reason of failed and skipped ones."""
    width = width or max(100, shutil.get_terminal_size((140, 24)).columns)
    header = (
        f"{'case':<28} {'status':<8} {'liver ml':>9} {'tumor ml':>9} {'burden %':>9} {'lesions':>7}  note"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        name = row["case"] or Path(row["source"]).name
        note = (
            row["message"]
            if row["status"] != "done"
            else ("reused" if row["reused"] == "yes" else "")
            + (f" {row['message']}" if row["message"] else "")
        )
        line = (
            f"{name[:28]:<28} {row['status']:<8} {_number(row['liver_ml']):>9} {_number(row['tumor_ml']):>9} "
            f"{_number(row['tumor_burden_percent']):>9} {str(row['lesion_count']):>7}  {note.strip()}"
        )
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
    lines.append(counts_line(rows))
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{float(value):.1f}" if value not in ("", None) else ""
