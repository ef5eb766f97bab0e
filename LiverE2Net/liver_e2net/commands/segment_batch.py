"""`liver-e2net segment-batch`: many CTs -> one folder per case + cohort.csv; resumable, shardable by torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from ..checkpoint import default_model_path, load_checkpoint
from ..cohort.batch import merge_rows, plan, prepare_outdir, refuse_mixed_models, run_share
from ..cohort.discovery import discover
from ..cohort.ray_engine import run_on_ray
from ..cohort.runner import LABEL_FILES, BatchOptions, model_info, slice_count
from ..cohort.sharding import Shard, barrier, gather_to_rank0, process_group, rank_device, rank_threads
from ..cohort.table import summary_text, write_table
from ..errors import UserInputError
from ..fp_filter import choose_filter
from ..pipeline import Segmenter
from ..progress import make_reporter
from ..protocol import COHORT_TABLE, PREVIEW_FILE
from .segment import add_segmenter_arguments, check_segmenter_arguments

log = logging.getLogger("liver_e2net")
TABLE = COHORT_TABLE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment-batch",
        help="segment many CTs (files, folders, CSV lists, DICOM trees) into a cohort table",
        description="Segment every CT found in INPUTS into OUTDIR/<case>/ and write OUTDIR/cohort.csv. A rerun "
        "reuses finished cases (checked, not just present). Under torchrun each process takes its "
        "share of the cases and rank 0 writes the table. Exit status 0 when the batch ran to its end, failed "
        "cases included (see the status column); 2 for unusable arguments.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="CT files, folders (walked for NIfTI/NRRD/MHA and DICOM), "
        "CSV files listing paths (column 'path', optional 'case')",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="batch folder")
    parser.add_argument(
        "--format",
        dest="formats",
        nargs="+",
        default=["nifti"],
        choices=list(LABEL_FILES),
        help="label map formats (default nifti); dicom-seg needs DICOM input",
    )
    add_segmenter_arguments(parser, "<case>/stl/", "<case>/probabilities.nii.gz", f"<case>/{PREVIEW_FILE}")
    parser.add_argument(
        "--pattern", default="*", help="file-name pattern for volumes found in folders (e.g. '*_ct.nii.gz')"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="allow a model other than the one of earlier outputs in OUTDIR (recomputes those cases)",
    )
    parser.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local (default; also under torchrun) or ray (optional extra: pip install ray)",
    )
    parser.add_argument(
        "--address",
        default="auto",
        help="Ray cluster to join (default auto: the running one; 'local' starts one here)",
    )
    parser.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else CPUs / threads)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shard = Shard.from_env(os.environ)
    if args.engine == "ray" and shard.distributed:
        raise UserInputError("--engine ray under torchrun: use one engine, not both")
    check_segmenter_arguments(args)
    options = BatchOptions(
        tuple(dict.fromkeys(args.formats)),
        args.tumors,
        args.min_lesion_ml,
        _case_output(args.probabilities, "--probabilities"),
        _case_output(args.stl, "--stl"),
        args.smoothing,
        args.tta,
        tuple(args.tta_scales) if args.tta_scales else None,
        _case_output(args.preview, "--preview"),
        args.precision,
    )
    # The model before the batch folder: a refused model (or --fp-filter on without a filter) writes nothing.
    checkpoint = _checkpoint(args.model, args.fp_filter)
    refuse_output_inside_inputs(Path(args.output), args.inputs)
    outdir = prepare_outdir(Path(args.output))
    discovery = discover(args.inputs, args.pattern, exclude=outdir)
    if not discovery.cases and not discovery.skipped:
        raise UserInputError(
            f"no CT found in {', '.join(args.inputs)} (looked for NIfTI/NRRD/MHA files matching "
            f"'{args.pattern}', DICOM series and CSV lists)"
        )
    if shard.rank == 0:
        _log_discovery(discovery)
    model = model_info(checkpoint)
    refuse_mixed_models(outdir, model, args.force)
    progress = make_reporter("none" if shard.rank and args.progress in ("auto", "bar") else args.progress)
    start = time.perf_counter()
    if args.engine == "ray":
        work = plan(discovery.cases, outdir, options, model["fingerprint"])
        _log_plan(discovery, work, "Ray workers", model)
        records = run_on_ray(
            list(work.pending),
            checkpoint,
            options,
            outdir,
            model,
            args.address,
            args.workers,
            args.threads,
            args.device,
            progress,
        )
    else:
        segmenter = Segmenter(
            checkpoint,
            device=rank_device(args.device, shard),
            threads=rank_threads(args.threads, shard),
            tta=options.test_time_augmentation(),
            precision=options.precision,
        )
        with process_group(shard):
            work = plan(discovery.cases, outdir, options, model["fingerprint"])
            barrier(shard)  # every rank plans on the same state before anyone writes
            if shard.rank == 0:
                _log_plan(discovery, work, f"{shard.world} process(es)", model)
            mine = shard.take(work.pending, [slice_count(case) for case in work.pending])
            records = run_share(
                mine,
                segmenter,
                options,
                outdir,
                model,
                progress,
                **({"rank": shard.rank, "world": shard.world} if shard.distributed else {}),
            )
            records = gather_to_rank0(shard, records)
    elapsed = time.perf_counter() - start
    close = getattr(progress, "close", None)
    if close:
        close()
    if shard.rank == 0:
        _finish(
            args, merge_rows(discovery, outdir, work.reusable, records), records, elapsed, outdir, progress
        )
    return 0


def _case_output(value: str | bool | None, option: str) -> bool:
    """A batch writes each output into its case folder: the option takes no path here."""
    if value not in (None, True):
        raise UserInputError(
            f"{option} {value}: segment-batch writes this output into each case folder; give {option} alone"
        )
    return bool(value)


def refuse_output_inside_inputs(outdir: Path, inputs: list[str]) -> None:
    """OUTDIR equal to or inside an input folder would be walked as input, and its files taken for CTs."""
    target = Path(os.path.realpath(outdir))
    for source in inputs:
        folder = Path(os.path.realpath(source))
        if folder.is_dir() and (target == folder or folder in target.parents):
            raise UserInputError(
                f"-o {outdir} is inside the input folder {source}; choose an output folder outside the inputs"
            )


def _checkpoint(path: str | None, fp_filter: str):
    """The checkpoint itself (not a Segmenter): Ray ships it to its workers, and the fingerprint needs it first.
    It keeps its false-positive filter only where --fp-filter uses it, so the fingerprint says whether it ran."""
    path = path or default_model_path()
    if path is None:
        raise UserInputError("no model given and no bundled model found in Resources/Models; pass --model")
    checkpoint = load_checkpoint(path)
    return dataclasses.replace(
        checkpoint, fp_filter=choose_filter(checkpoint.fp_filter, fp_filter, str(path))
    )


def _log_plan(discovery, work, workers: str, model: dict) -> None:
    log.info(
        "%d case(s): %d complete from an earlier run, %d to segment on %s; model %s",
        len(discovery.cases),
        len(work.reusable),
        len(work.pending),
        workers,
        model["description"],
    )


def _finish(args, rows: list[dict], records: list[dict], elapsed: float, outdir: Path, progress) -> None:
    """The summary (stdout, or stderr when stdout carries JSON lines), then cohort.csv. If the table cannot be
    written (disk full), the summary is still shown and the case records stay: a rerun writes the table."""
    computed = sum(record["status"] == "done" for record in records)
    rate = (
        f"; {computed} segmented in {elapsed:.0f} s = {3600 * computed / elapsed:.1f} cases/hour"
        if computed
        else ""
    )
    stream = sys.stderr if args.progress == "jsonl" else sys.stdout
    print(summary_text(rows) + rate, file=stream)
    try:
        write_table(rows, outdir / TABLE)
    except (OSError, UserInputError) as error:
        raise UserInputError(
            f"the cohort table {outdir / TABLE} could not be written ({error}); the finished cases "
            "are kept: free space and rerun to write it (nothing is recomputed)"
        ) from error
    print(f"cohort table: {outdir / TABLE}", file=stream)
    progress(
        "done",
        1.0,
        f"cohort table {outdir / TABLE}",
        table=str(outdir / TABLE),
        failed=sum(row["status"] == "failed" for row in rows),
    )


def _log_discovery(discovery) -> None:
    for note in discovery.notes:
        log.warning("note: %s", note)
    for item in discovery.skipped:
        log.info("skipped %s: %s", item.source, item.reason)
    if discovery.ignored:
        names = ", ".join(Path(p).name for p in discovery.ignored[:5])
        log.info(
            "ignored %d file(s) that are not CT volumes or DICOM: %s%s",
            len(discovery.ignored),
            names,
            ", ..." if len(discovery.ignored) > 5 else "",
        )
