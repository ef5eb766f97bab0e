"""`liver-e2net check-data`: find CT + label pairs as `train` does and read each with train's own readers, so a bad
file is named (with the fix) in seconds instead of being skipped in a long run. The training panel runs it too."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..progress import add_progress_argument, make_reporter
from ..protocol import MIN_TRAINING_CASES, PAIR_KEYS, STAGE_CHECK, STAGE_DONE, UNPAIRED_KEYS
from . import add_data_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-data",
        help="find and check CT + label pairs before training",
        description="Find CT + label pairs as `train` does (imagesTr/ + labelsTr/, a folder of NAME_ct + "
        "NAME_label files, a JSON list, --case pairs) and read each as training would: labels {0, 1, 2} with a "
        "liver, on the CT's grid, CT values in HU. Prints a table (or --json) of usable pairs and why the others "
        f"are not. Exit code 0 when at least {MIN_TRAINING_CASES} pairs are usable, else 2.",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON document: {"pairs": [...], "unpaired": [...], "usable": N}',
    )
    add_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.sources import check_unique, given_cases

    if not args.data and not args.case:
        raise UserInputError("give the training data: --data DIR_OR_JSON and/or --case CT LABEL")
    cases, unpaired = [], []
    cases, lonely = given_cases(args.data, args.case, strict=False)
    unpaired = [dict(zip(UNPAIRED_KEYS, (path.name, str(path), problem))) for path, problem in lonely]
    check_unique(cases)
    progress = make_reporter(args.progress)
    pairs = []
    for index, case in enumerate(cases, start=1):
        pairs.append(check_pair(case))
        message = f"{case.name}: {pairs[-1]['problem'] or 'ok'}"
        progress(STAGE_CHECK, index / len(cases), message, index=index, total=len(cases), **pairs[-1])
    for record in unpaired:
        progress(STAGE_CHECK, 1.0, f"{record['name']}: {record['problem']}", **record)
    usable = sum(not pair["problem"] for pair in pairs)
    problem = refusal(pairs, unpaired, usable)
    if not problem:
        progress(STAGE_DONE, 1.0, f"{usable} of {len(pairs)} pairs usable")  # else the error line is the last
    if hasattr(progress, "close"):
        progress.close()
    if args.json:
        print(json.dumps({"pairs": pairs, "unpaired": unpaired, "usable": usable}, indent=1))
    elif args.progress != "jsonl":  # stdout carries only the progress lines then
        print(format_table(pairs, unpaired))
    if problem:
        raise UserInputError(problem)
    return 0


def check_pair(case) -> dict:
    """One pair read and checked by the readers `train` uses; a problem is recorded, never raised."""
    from ..io import input_warnings, read_ct
    from ..training.labels import read_label

    record = dict(zip(PAIR_KEYS, (case.name, str(case.image), str(case.label), 0, False, "", "")))
    try:
        ct = read_ct(case.image)
        label = read_label(case.label, ct)
    except UserInputError as error:
        record["problem"] = str(error)
        return record
    except (OSError, RuntimeError) as error:  # not foreseen by the readers: still this pair's problem only
        record["problem"] = f"cannot read {case.image} + {case.label}: {error}"
        return record
    direction = np.reshape(ct.GetDirection(), (3, 3))
    record["slices"] = int(ct.GetSize()[int(np.argmax(np.abs(direction[2])))])  # the axis nearest head-foot
    record["tumor"] = bool((label == 2).any())
    record["warning"] = "; ".join(input_warnings(ct))
    return record


def format_table(pairs: list[dict], unpaired: list[dict]) -> str:
    rows = [("case", "slices", "tumor", "files", "status")]
    for pair in pairs:
        files = f"{Path(pair['image']).name} + {Path(pair['label']).name}"
        if pair["problem"]:
            rows.append((pair["name"], "-", "-", files, f"skipped: {pair['problem']}"))
        else:
            status = f"note: {pair['warning']}" if pair["warning"] else "ok"
            rows.append((pair["name"], str(pair["slices"]), "yes" if pair["tumor"] else "no", files, status))
    rows += [
        (record["name"], "-", "-", record["file"], f"skipped: {record['problem']}") for record in unpaired
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows
    ]
    usable = [pair for pair in pairs if not pair["problem"]]
    summary = (
        f"{len(usable)} of {len(pairs)} pairs usable ({sum(pair['tumor'] for pair in usable)} with tumor)"
    )
    if unpaired:
        summary += f"; {len(unpaired)} file{'s' if len(unpaired) > 1 else ''} without a partner"
    return "\n".join([*lines, summary])


def refusal(pairs: list[dict], unpaired: list[dict], usable: int) -> str:
    """Why `train` would refuse this data ("" if it would not), naming every file concerned and what to do."""
    parts = []
    if unpaired:
        files = ", ".join(f"{record['file']} ({record['problem']})" for record in unpaired)
        parts.append(f"train --data refuses files that pair with nothing, rename or move them: {files}")
    if usable < MIN_TRAINING_CASES:
        left_out = "; ".join(f"{pair['name']}: {pair['problem']}" for pair in pairs if pair["problem"])
        parts.append(
            f"{usable} usable CT + label pair{'' if usable == 1 else 's'}, but training needs at least "
            f"{MIN_TRAINING_CASES}, one to train on and one to validate with"
            + (f" (left out: {left_out})" if left_out else "")
            + ": fix those files, or add pairs with --data or --case"
        )
    return "; and ".join(parts)
