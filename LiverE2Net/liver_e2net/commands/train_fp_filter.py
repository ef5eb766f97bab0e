"""`liver-e2net train-fp-filter`: a tumor false-positive filter for one model, trained on its own output."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import __version__
from ..errors import UserInputError
from ..outputs import check_numbers
from ..postprocessing import DEFAULT_MIN_LESION_ML
from ..progress import add_progress_argument, make_reporter
from . import add_data_arguments
from .segment import check_writable


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-fp-filter",
        help="train the object-level tumor false-positive filter of a model (Chlebus et al. 2018)",
        description="Segment labelled cases with MODEL (and copies with synthetic tumors), label each 3D tumor "
        "candidate true or false positive (output/reference correspondence with Dice > 0.2), train a random "
        "forest on the candidates' shape, intensity, confidence and liver-depth features, and write MODEL "
        "with the filter to OUT.pt. `segment` then uses it (--fp-filter auto|on|off).",
    )
    parser.add_argument("--model", required=True, metavar="MODEL.pt", help="the model to filter")
    add_data_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="model file with the filter")
    parser.add_argument(
        "--synthetic-copies",
        type=int,
        default=2,
        metavar="N",
        help="also segment N copies of each case with synthetic tumors painted in (default 2)",
    )
    parser.add_argument(
        "--trees", type=int, default=256, help="random forest size (default 256, as the paper)"
    )
    parser.add_argument(
        "--phase-copies",
        type=int,
        default=0,
        metavar="N",
        help="also segment N more such copies of each case, each moved to an arterial, delayed or unenhanced phase "
        "(default 0)",
    )
    parser.add_argument(
        "--noise-copies",
        type=int,
        default=0,
        metavar="N",
        help="also segment N more such copies of each case with white noise of 5-20 HU added, so that the filter "
        "sees the false tumors of noisier CTs (default 0)",
    )
    parser.add_argument(
        "--min-lesion-ml",
        type=float,
        default=DEFAULT_MIN_LESION_ML,
        metavar="ML",
        help="draw candidates of at least this size; `segment` then drops smaller tumors while the filter runs "
        f"(default {DEFAULT_MIN_LESION_ML})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic tumors and the forest")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all available cores)")
    add_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, save_checkpoint, weights_fingerprint, without_held_out
    from ..fp_filter import FalsePositiveFilter, fit_filter
    from ..pipeline import Segmenter
    from ..training.fp_candidates import collect_candidates
    from ..training.sources import check_unique, given_cases

    if min(args.synthetic_copies, args.phase_copies, args.noise_copies) < 0 or args.trees < 1:
        raise UserInputError("--synthetic-copies, --phase-copies and --noise-copies must be >= 0, and --trees >= 1")
    check_numbers(args.threads, min_lesion_ml=args.min_lesion_ml)
    check_writable([args.output], None)
    if Path(args.output).is_dir():
        raise UserInputError(f"-o {args.output} is a folder; give a model file name such as model_fp.pt")
    sources, _ = given_cases(args.data, args.case)
    if not sources:
        raise UserInputError("no labelled cases: pass --data DIR_OR_JSON or --case CT LABEL")
    check_unique(sources)
    checkpoint = load_checkpoint(args.model)
    segmenter = Segmenter(checkpoint, device=args.device, threads=args.threads, fp_filter="off")
    progress = make_reporter(args.progress)
    try:
        candidates = collect_candidates(
            segmenter,
            sources,
            args.synthetic_copies,
            args.seed,
            progress,
            args.min_lesion_ml,
            args.phase_copies,
            args.noise_copies,
        )
    finally:
        if hasattr(progress, "close"):
            progress.close()
    true, total = int(candidates.is_true.sum()), int(candidates.is_true.size)
    counts = f"{total} tumor candidates from {len(candidates.runs)} segmented volumes: {true} true, {total - true} false positives"
    ensemble, accuracy = fit_filter(candidates.features, candidates.is_true, args.seed, args.trees)
    fp_filter = FalsePositiveFilter(
        ensemble,
        weights_fingerprint(checkpoint.stage2),
        training={
            "cases": [source.name for source in sources],
            "synthetic_copies": args.synthetic_copies,
            "phase_copies": args.phase_copies,
            "noise_copies": args.noise_copies,
            "seed": args.seed,
            "trees": args.trees,
            "candidates": total,
            "true_positives": true,
            "false_positives": total - true,
            **accuracy,
            "liver_e2net": __version__,
        },
        min_lesion_ml=args.min_lesion_ml,
    )
    kept = fp_filter.keep(candidates.features)
    # A new filter changes the model's output: held-out figures measured without it no longer describe it.
    metadata = without_held_out(checkpoint.metadata)
    filtered = dataclasses.replace(checkpoint, fp_filter=fp_filter, metadata=metadata, path=None)
    path = save_checkpoint(filtered, args.output)
    print(counts)
    print(
        f"cross-validated accuracy {accuracy['cv_accuracy']:.3f} (balanced {accuracy['cv_balanced_accuracy']:.3f}, "
        f"{accuracy['cv_folds']} folds); "
        f"on its training candidates the filter rejects {int((~kept & ~candidates.is_true).sum())} of "
        f"{total - true} false and {int((~kept & candidates.is_true).sum())} of {true} true positives"
    )
    print(f"wrote {path}: {load_checkpoint(path).describe()}")
    return 0
