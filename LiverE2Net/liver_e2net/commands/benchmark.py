"""`liver-e2net benchmark`: seconds per case and per stage, end to end, and peak memory, per model.

By default it times the bundled models, the ones users run. Each model runs in its own child process so its
peak memory (max RSS) is its own; `--configs` times untrained configs instead (speed does not depend on the
weights). Every figure is the median of `--repeats` runs: single runs on a shared machine vary 5-20x.
End to end is a whole `liver-e2net segment` child (start-up, reading, both stages, writing the label).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..config import CONFIGS
from ..errors import UserInputError
from ..outputs import check_numbers, check_writable, write_all
from .segment import add_precision_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("benchmark", help="time the two-stage pipeline on a CT for each config")
    parser.add_argument(
        "input",
        nargs="?",
        help="CT to time (default: the IRCAD CT ../shared/data/case01_ct.nii.gz "
        "if present, else the bundled sample)",
    )
    parser.add_argument(
        "--configs", help="comma-separated configs to time with random weights (lite, paper, ...) instead"
    )
    parser.add_argument("--model", help="time this checkpoint (default: every bundled model, the default first)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    add_precision_argument(parser)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs after one warm-up (median reported; default 3)"
    )
    parser.add_argument(
        "--no-end-to-end", dest="end_to_end", action="store_false", help="skip the end-to-end segment runs"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one config in this process
    parser.set_defaults(func=run)


def default_input() -> Path:
    root = Path(__file__).resolve().parents[3]
    for candidate in (
        root.parent / "shared" / "data" / "case01_ct.nii.gz",
        root / "Resources" / "SampleData" / "crlm1004_ct.nii.gz",
    ):
        if candidate.exists():
            return candidate
    raise UserInputError("no CT given and none of the default benchmark CTs found; pass a CT path")


def run(args: argparse.Namespace) -> int:
    path = Path(args.input) if args.input else default_input()
    if args.child:
        print(json.dumps(time_one(path, args.child, args)))
        return 0
    if args.repeats < 1:
        raise UserInputError(f"--repeats {args.repeats}: must be >= 1 (3 or more for a median worth quoting)")
    check_numbers(args.threads)
    check_writable([args.json])  # before minutes of timing, not after
    targets = _targets(args)
    rows = []
    for target in targets:
        command = [
            sys.executable,
            "-m",
            "liver_e2net",
            "benchmark",
            str(path),
            "--child",
            target,
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
            "--precision",
            args.precision,
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserInputError(
                f"benchmark of {target} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        if args.end_to_end and target not in CONFIGS:
            row["end_to_end_s"] = end_to_end_seconds(path, target, args)
        rows.append(row)
    print_table(path, rows, args.repeats)
    if args.json:
        write_all({Path(args.json): (lambda temporary: temporary.write_text(json.dumps(rows, indent=2)), "json")})
    return 0


def _targets(args: argparse.Namespace) -> list[str]:
    from ..protocol import offered_models

    if args.model:
        return [args.model]
    if args.configs:
        return [c.strip() for c in args.configs.split(",") if c.strip()]
    bundled = offered_models()
    if not bundled:
        raise UserInputError("no bundled model found in Resources/Models; pass --model or --configs lite,paper")
    return [str(path) for path in bundled]


def end_to_end_seconds(path: Path, model: str, args: argparse.Namespace) -> float:
    """Median wall time of whole `liver-e2net segment` children, as a user would run them."""
    seconds = []
    with tempfile.TemporaryDirectory(prefix="liver-e2net-benchmark-") as folder:
        command = [sys.executable, "-m", "liver_e2net", "segment", str(path), "-o",
                   str(Path(folder) / "label.nii.gz"), "--model", model, "--device", args.device,
                   "--precision", args.precision]
        if args.threads:
            command += ["--threads", str(args.threads)]
        for _ in range(args.repeats):
            (Path(folder) / "label.nii.gz").unlink(missing_ok=True)
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or [str(done.returncode)]
                raise UserInputError(f"end-to-end segment of {path} with {model} failed: {tail[0]}")
    return round(statistics.median(seconds), 2)


def time_one(path: Path, target: str, args: argparse.Namespace) -> dict:
    import SimpleITK as sitk
    import torch

    from ..checkpoint import random_checkpoint
    from ..config import get_config
    from ..io import read_ct
    from ..pipeline import Segmenter

    checkpoint = random_checkpoint(get_config(target)) if target in CONFIGS else target
    segmenter = Segmenter(checkpoint, device=args.device, threads=args.threads, precision=args.precision)
    ct = read_ct(path)
    segmenter.segment(ct[:, :, : min(8, ct.GetSize()[2])])  # warm-up: allocator, kernels, cuDNN autotune
    runs = []
    for _ in range(max(1, args.repeats)):
        if segmenter.device.type == "cuda":
            torch.cuda.synchronize()
        result = segmenter.segment(ct)
        runs.append(result.seconds)
    seconds = {
        key: statistics.median(run.get(key, 0.0) for run in runs)
        for key in ("total", "stage1", "stage2", "postprocess")
    }
    size = ct.GetSize()
    label = result.label
    liver_slices = int((label.reshape(label.shape[0], -1) > 0).any(1).sum()) if label.any() else 0
    return {
        "model": target,
        "config": segmenter.config.name,
        "device": str(segmenter.device),
        "threads": segmenter.threads,
        "precision": segmenter.precision,
        "ct": f"{size[0]}x{size[1]}x{size[2]}",
        "slices": size[2],
        "liver_slices_found": liver_slices,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "stage1_s_per_slice": round(seconds["stage1"] / size[2], 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        if torch.cuda.is_available()
        else None,
        "date": time.strftime("%Y-%m-%d"),
        "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
    }


def print_table(path: Path, rows: list[dict], repeats: int) -> None:
    print(f"CT: {path}  (median of {repeats} run{'s' if repeats > 1 else ''} after a warm-up)")
    header = f"{'model':<19}{'device':<8}{'thr':>4}{'prec':>9}{'total s':>9}{'stage1 s':>10}{'stage2 s':>10}{'post s':>8}{'s/slice1':>10}{'peak GB':>9}{'e2e s':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        s = row["seconds"]
        print(
            f"{Path(row['model']).stem[:18]:<19}{row['device']:<8}{row['threads']:>4}{row['precision']:>9}{s['total']:>9.2f}"
            f"{s['stage1']:>10.2f}{s['stage2']:>10.2f}{s['postprocess']:>8.2f}{row['stage1_s_per_slice']:>10.4f}{row['peak_rss_gb']:>9.2f}"
            + (f"{row['end_to_end_s']:>8.2f}" if "end_to_end_s" in row else f"{'-':>8}")
        )
