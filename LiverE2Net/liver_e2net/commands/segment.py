"""`liver-e2net segment`: one CT in, label map (+ STL, probabilities, JSON report) out, all or nothing."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..fp_filter import FP_FILTER_MODES
from ..io import read_ct
from ..outputs import OutputSet, OutputTargets, check_numbers, check_space, report_fields, write_case_outputs
from ..outputs import check_writable as check_writable
from ..pipeline import TTA_MODES
from ..progress import add_progress_argument, make_reporter
from ..protocol import PRECISIONS

log = logging.getLogger("liver_e2net")
OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment the liver and liver tumors of one CT",
        description="Segment liver and liver tumors in a CT volume (file or DICOM folder). Every output is "
        "written completely or not at all; a failure exits non-zero and leaves none of them.",
    )
    parser.add_argument("input", help="CT volume: .nii.gz, .nrrd, .mha, ... or a DICOM series folder")
    parser.add_argument(
        "-o", "--output", required=True, help="label map: .nii.gz, .nrrd, .mha or .seg.nrrd (Slicer)"
    )
    add_segmenter_arguments(
        parser, "beside the label map: <name>_stl/", "<name>_probabilities.nii.gz", "<name>_preview.png"
    )
    parser.add_argument(
        "--report", metavar="JSON", help="write volumes, lesion table, timings to this JSON file"
    )
    parser.set_defaults(func=run)


def add_segmenter_arguments(
    parser, stl_default: str, probabilities_default: str, preview_default: str
) -> None:
    """The options `segment` and `segment-batch` share, with one meaning; the defaults say where files go."""
    parser.add_argument("--model", help="checkpoint (.pt); default: the bundled model")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: the cores not busy with other processes)"
    )
    add_precision_argument(parser)
    parser.add_argument("--no-tumors", dest="tumors", action="store_false", help="liver only")
    parser.add_argument(
        "--min-lesion-ml",
        type=float,
        help="drop tumor components smaller than this (ml; default: the size the model's false-positive filter "
        "was trained at, else 0.05)",
    )
    add_fp_filter_argument(parser)
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time fusion of stage 2: multiscale (the model's scales, see --tta-scales; the panel's Accuracy: "
        "Best) and/or a left-right flip (only for models trained with flips: it warns otherwise)",
    )
    parser.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        metavar="S",
        help="scales for --tta multiscale, each 0.5-2 (default: the model's own, shown by `info`; 0.875 1 unless "
        "its fusion did not hold up on held-out CT; the stage-2 input rounds to steps of 0.125)",
    )
    parser.add_argument(
        "--stl",
        nargs="?",
        const=True,
        metavar="DIR",
        help=f"also write one closed STL surface per segment (LPS mm); default folder: {stl_default}",
    )
    parser.add_argument(
        "--smoothing", type=float, default=1.0, help="STL surface smoothing in mm, 0-10 (default 1.0)"
    )
    parser.add_argument(
        "--preview",
        nargs="?",
        const=True,
        metavar="PNG",
        help=f"also write a review figure: axial and coronal outlines on the CT and a 3D view; default: "
        f"{preview_default}",
    )
    parser.add_argument(
        "--probabilities",
        nargs="?",
        const=True,
        metavar="PATH",
        help=f"also write liver/tumor probabilities (2-component image); default: {probabilities_default}",
    )
    add_progress_argument(parser)


def add_precision_argument(parser, default: str | None = "auto") -> None:
    """--precision for every command that runs a network (train: default None, so a resumed run keeps its own)."""
    parser.add_argument(
        "--precision",
        default=default,
        choices=PRECISIONS,
        help="auto (default): fp16 on CUDA, bf16 on CPUs with AMX or AVX512-BF16 (1.4-2x faster), else fp32; "
        "fp32: full precision, the same result on every CPU",
    )


def check_segmenter_arguments(args: argparse.Namespace) -> None:
    check_numbers(args.threads, args.tta_scales or (), args.smoothing, args.min_lesion_ml)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import Segmenter, TestTimeAugmentation

    check_segmenter_arguments(args)
    targets = segment_targets(args)
    targets.check(args.input)  # before any work: nothing overwrites the input or another output
    progress = make_reporter(args.progress)
    with OutputSet(targets.files().values()) as outputs:
        progress("load", 0.0, "loading model")
        tta = TestTimeAugmentation.from_mode(args.tta, args.tta_scales)
        segmenter = Segmenter(
            args.model,
            device=args.device,
            threads=args.threads,
            tta=tta,
            fp_filter=args.fp_filter,
            precision=args.precision,
        )
        progress("load", 0.02, f"reading {args.input}")
        ct = read_ct(args.input)
        check_space(targets.estimated_bytes(int(np.prod(ct.GetSize()))))
        result = segmenter.segment(
            ct,
            tumors=args.tumors,
            probabilities=bool(args.probabilities),
            min_lesion_ml=args.min_lesion_ml,
            progress=progress,
        )
        progress("write", 0.92, f"writing {args.output}")
        report = report_fields(args.input, segmenter, result, ct, args.tta)
        write_case_outputs(outputs, targets, result, ct, report)
    for warning in result.warnings:
        log.warning("warning: %s", warning)
    if result.rejected_candidates:
        log.info("the false-positive filter removed %d tumor candidate(s)", result.rejected_candidates)
    finish(args, progress, report, segmenter)
    return 0


def segment_targets(args: argparse.Namespace) -> OutputTargets:
    """The files of this run; --stl and --probabilities without a path go beside the label map."""
    from ..io import output_format

    output = Path(args.output)
    stem = output.with_name(_stem(output.name))
    return OutputTargets(
        {output_format(output): output},
        probabilities=_optional_path(args.probabilities, f"{stem}_probabilities.nii.gz"),
        stl=_optional_path(args.stl, f"{stem}_stl"),
        report=Path(args.report) if args.report else None,
        preview=_optional_path(args.preview, f"{stem}_preview.png"),
        smoothing=args.smoothing,
    )


def _optional_path(value: str | bool | None, default: str) -> Path | None:
    """--stl / --probabilities: absent (None), given without a path (True: the default) or with one."""
    if not value:
        return None
    return Path(default if value is True else value)


def _stem(name: str) -> str:
    suffix = next((s for s in OUTPUT_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


def finish(args: argparse.Namespace, progress, report: dict, segmenter) -> None:
    message = (
        f"liver {report['liver_ml']:.1f} ml, tumor {report['tumor_ml']:.1f} ml "
        f"({len(report['lesions'])} lesion{'' if len(report['lesions']) == 1 else 's'}, burden {report['tumor_burden_percent']:.2f} %) "
        f"in {report['seconds']['total']:.1f} s on {segmenter.device}"
    )
    progress("done", 1.0, message, liver_ml=report["liver_ml"], tumor_ml=report["tumor_ml"])
    if args.progress != "jsonl":
        print(message)
    close = getattr(progress, "close", None)
    if close:
        close()


def add_fp_filter_argument(parser) -> None:
    parser.add_argument(
        "--fp-filter",
        default="auto",
        choices=FP_FILTER_MODES,
        help="tumor false-positive filter: auto (default: if the model carries one), on (the model must) or off",
    )
