"""`liver-e2net segment`: one CT in, label map (+ STL, probabilities, JSON report) out."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import UserInputError
from ..fp_filter import FP_FILTER_MODES
from ..io import atomic_output, output_format, read_ct, write_labelmap
from ..pipeline import DEFAULT_TTA_SCALES, TTA_MODES
from ..progress import add_progress_argument, make_reporter

log = logging.getLogger("liver_e2net")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment the liver and liver tumors of one CT",
        description="Segment liver and liver tumors in a CT volume (file or DICOM folder).",
    )
    parser.add_argument("input", help="CT volume: .nii.gz, .nrrd, .mha, ... or a DICOM series folder")
    parser.add_argument(
        "-o", "--output", required=True, help="label map: .nii.gz, .nrrd, .mha or .seg.nrrd (Slicer)"
    )
    parser.add_argument("--model", help="checkpoint (.pt); default: the bundled model")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all available cores)")
    parser.add_argument("--no-tumors", dest="tumors", action="store_false", help="liver only")
    parser.add_argument(
        "--min-lesion-ml", type=float, default=0.05, help="drop tumor components smaller than this (ml)"
    )
    add_fp_filter_argument(parser)
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time fusion of stage 2: left-right flip and/or scales 0.875, 1, 1.125 (slower)",
    )
    parser.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        default=list(DEFAULT_TTA_SCALES),
        metavar="S",
        help="scales for --tta multiscale (default 0.875 1.0 1.125)",
    )
    parser.add_argument(
        "--stl", metavar="DIR", help="also write one closed STL surface per segment (LPS mm) here"
    )
    parser.add_argument(
        "--smoothing", type=float, default=1.0, help="STL surface smoothing in mm (default 1.0)"
    )
    parser.add_argument(
        "--probabilities", metavar="PATH", help="also write liver/tumor probabilities (2-component image)"
    )
    parser.add_argument(
        "--report", metavar="JSON", help="write volumes, lesion table, timings to this JSON file"
    )
    add_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import Segmenter, TestTimeAugmentation
    from ..report import case_report
    from ..surfaces import export_segment_surfaces

    output_format(args.output)  # refuse an unknown output type before any work
    check_writable([args.output, args.probabilities, args.report], args.stl)
    if args.min_lesion_ml < 0 or args.smoothing < 0:
        raise UserInputError("--min-lesion-ml and --smoothing must be >= 0")
    progress = make_reporter(args.progress)
    progress("load", 0.0, "loading model")
    tta = TestTimeAugmentation.from_mode(args.tta, tuple(args.tta_scales))
    segmenter = Segmenter(
        args.model, device=args.device, threads=args.threads, tta=tta, fp_filter=args.fp_filter
    )
    progress("load", 0.02, f"reading {args.input}")
    ct = read_ct(args.input)
    result = segmenter.segment(
        ct,
        tumors=args.tumors,
        probabilities=bool(args.probabilities),
        min_lesion_ml=args.min_lesion_ml,
        progress=progress,
    )
    progress("write", 0.92, f"writing {args.output}")
    write_labelmap(result.label, ct, args.output)
    if args.probabilities:
        write_probabilities(result.probabilities, ct, args.probabilities)
    if args.stl:
        export_segment_surfaces(result.label, ct, args.stl, args.smoothing)
    summary = case_report(result.label, ct)
    for warning in result.warnings:
        log.warning("warning: %s", warning)
    if result.rejected_candidates:
        log.info("the false-positive filter removed %d tumor candidate(s)", result.rejected_candidates)
    if args.report:
        report = {
            "input": str(args.input),
            "output": str(args.output),
            "model": model_summary(segmenter),
            "device": str(segmenter.device),
            "threads": segmenter.threads,
            "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
            **summary,
            "false_positive_filter": {
                "used": result.rejected_candidates is not None,
                "rejected_candidates": result.rejected_candidates or 0,
            },
            "warnings": result.warnings,
        }
        with atomic_output(args.report) as temporary:
            temporary.write_text(json.dumps(report, indent=2))
    message = (
        f"liver {summary['liver_ml']:.1f} ml, tumor {summary['tumor_ml']:.1f} ml "
        f"({len(summary['lesions'])} lesions, burden {summary['tumor_burden_percent']:.2f} %) "
        f"in {result.seconds['total']:.1f} s on {segmenter.device}"
    )
    progress("done", 1.0, message, liver_ml=summary["liver_ml"], tumor_ml=summary["tumor_ml"])
    if args.progress != "jsonl":
        print(message)
    close = getattr(progress, "close", None)
    if close:
        close()
    return 0


def add_fp_filter_argument(parser) -> None:
    parser.add_argument(
        "--fp-filter",
        default="auto",
        choices=FP_FILTER_MODES,
        help="tumor false-positive filter: auto (default: if the model carries one), on (the model must) or off",
    )


def model_summary(segmenter) -> dict:
    checkpoint = segmenter.checkpoint
    return {
        "path": str(checkpoint.path) if checkpoint.path else None,
        "name": checkpoint.metadata.get("name"),
        "config": checkpoint.config.name,
        "description": checkpoint.describe(),
    }


def write_probabilities(probabilities: np.ndarray, reference: sitk.Image, path: str) -> None:
    image = sitk.GetImageFromArray(np.moveaxis(probabilities, 0, -1).astype(np.float32), isVector=True)
    image.CopyInformation(reference)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def check_writable(files: list[str | None], folder: str | None) -> None:
    """Fail before the work, not after it, when an output cannot be written."""
    import os

    for path in [Path(p) for p in files if p]:
        parent = path.parent if str(path.parent) else Path(".")
        existing = next(p for p in [parent, *parent.parents] if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise UserInputError(f"cannot write {path}: {existing} is not a writable folder")
    if folder:
        existing = next(p for p in [Path(folder), *Path(folder).parents] if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise UserInputError(f"cannot write STL files to {folder}: {existing} is not a writable folder")
