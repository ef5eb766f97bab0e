"""`liver-e2net evaluate`: scores predicted label maps against references (or segments, then scores)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .. import evaluation
from ..errors import UserInputError
from ..nifti_integrity import nifti_problem
from ..outputs import write_all
from .segment import add_fp_filter_argument

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, VOE, RVD, ASSD, MSD, lesion detection and tumor burden against reference labels",
        description=(
            "Compare predicted label maps (0 background, 1 liver, 2 tumor) with references, matched by case "
            "name (case01.nii.gz, case01_label.nii.gz, case01_pred.nii.gz ... are all 'case01'). Either give "
            "--pred and --ref, or --model and --data to segment the *_ct.* files of DATA first. Writes "
            "evaluation.csv and evaluation.json and prints a table."
        ),
    )
    parser.add_argument("--pred", type=Path, help="folder of predicted label maps")
    parser.add_argument(
        "--ref", type=Path, help="folder of reference label maps (CTs *_ct.* there give lesion HU)"
    )
    parser.add_argument("--model", help="segment with this model first (needs --data and -o)")
    parser.add_argument("--data", type=Path, help="folder with CTs (*_ct.*) and their reference label maps")
    parser.add_argument(
        "-o", "--output", type=Path, help="output folder (default: the --pred folder; required with --model)"
    )
    add_fp_filter_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Checks every input before the slow part, then prints the table and writes evaluation.csv/.json."""
    if args.model is not None or args.data is not None:
        if args.model is None or args.data is None or args.pred is not None or args.ref is not None:
            raise UserInputError("use either --pred DIR --ref DIR, or --model M --data DIR (not a mix)")
        if args.output is None:
            raise UserInputError("--model needs -o OUTDIR for the segmentations and the evaluation files")
        output = writable_folder(args.output)
        cases = segment_cases(args.model, args.data, output, fp_filter=args.fp_filter)
    else:
        if args.pred is None or args.ref is None:
            raise UserInputError("give --pred DIR and --ref DIR (or --model M --data DIR)")
        if args.fp_filter != "auto":
            raise UserInputError("--fp-filter applies when segmenting (--model M --data DIR), not to --pred")
        cases = evaluation.pair_folders(args.pred, args.ref)  # first: a missing --pred folder is not created
        evaluation.check_geometry(cases)
        output = writable_folder(args.output or args.pred)
    refuse_damaged(cases)
    result = evaluation.evaluate_cases(evaluation.load_case(case) for case in cases)
    print(evaluation.format_table(result))
    write_evaluation(result, output)
    log.info("wrote %s and %s", output / "evaluation.csv", output / "evaluation.json")
    return 0


def refuse_damaged(cases: list[evaluation.CaseFiles]) -> None:
    """A cut-short NIfTI reads as zeros past the cut: it would be scored (badly) instead of refused."""
    for case in cases:
        for path in (case.prediction, case.reference, case.ct):
            problem = nifti_problem(path) if path else ""
            if problem:
                raise UserInputError(problem)


def write_evaluation(result: evaluation.EvaluationResult, output: Path) -> None:
    """evaluation.csv and .json together, complete or not at all (never an empty table after a full disk)."""
    csv, report = output / "evaluation.csv", output / "evaluation.json"
    write_all({
        csv: (lambda temporary: evaluation.write_csv(result, temporary), "size"),
        report: (lambda temporary: evaluation.write_json(result, temporary), "json"),
    })  # fmt: skip


def writable_folder(folder: Path) -> Path:
    """Creates the output folder and checks it takes files now, before minutes of work are spent."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"cannot create output folder {folder}: {error.strerror}") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"output folder {folder} is not writable; choose another with -o")
    return folder


def segment_cases(
    model: str, data: Path, output: Path, device: str = "auto", fp_filter: str = "auto"
) -> list[evaluation.CaseFiles]:
    """Segments every CT of `data` that has a reference label map into output/<case>_pred.nii.gz."""
    from ..io import read_ct, write_labelmap
    from ..pipeline import Segmenter

    references, cts = evaluation.scan_folder(data)
    if not references:
        raise UserInputError(f"no reference label maps in {data}")
    missing = sorted(references.keys() - cts.keys())
    if missing:
        names = ", ".join(references[name].name for name in missing)
        raise UserInputError(f"no CT (<case>_ct.nii.gz or <case>_0000.nii.gz) in {data} for: {names}")
    segmenter = Segmenter(model, device=device, fp_filter=fp_filter)  # loaded once for all cases
    cases = []
    for name in sorted(references):
        prediction = output / f"{name}_pred.nii.gz"
        log.info("segmenting %s", cts[name])
        ct = read_ct(cts[name])
        write_labelmap(segmenter.segment(ct).label, ct, prediction)
        cases.append(evaluation.CaseFiles(name, prediction, references[name], cts[name]))
    return cases
