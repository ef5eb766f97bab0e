"""Cohort throughput: cases per hour of `segment-batch` end to end (start-up, reading, both stages, writing), with
1 process (no engine) and N processes under torchrun on the same machine, each with a fresh output folder.

    .venv/bin/python benchmarks/cohort_throughput.py [--processes 1 2] [--model M.pt] [--json out.json] [CT ...]

Without --model the default (lite) config runs with random weights: speed does not depend on the weights.
Default cases: every CT of ../shared/data (and its extra_unlabeled/), else the bundled sample CTs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_cases() -> list[Path]:
    shared = REPO.parent / "shared" / "data"
    found = sorted(shared.glob("case*_ct.nii.gz")) + sorted((shared / "extra_unlabeled").glob("*_ct.nii.gz"))
    return found or sorted((REPO / "Resources" / "SampleData").glob("*_ct.nii.gz"))


def run_batch(
    cases: list[Path], model: Path, processes: int, outdir: Path, device: str, threads: int | None
) -> dict:
    """One timed batch; `processes` > 1 runs under torchrun --standalone on this machine. `threads` per process
    (default: the batch's own choice, cores / processes)."""
    arguments = [
        "-m",
        "liver_e2net",
        "segment-batch",
        *map(str, cases),
        "-o",
        str(outdir),
        "--model",
        str(model),
        "--device",
        device,
        "--progress",
        "none",
        *(["--threads", str(threads)] if threads else []),
    ]
    launcher = (
        [sys.executable]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
        ]
    )
    start = time.perf_counter()
    done = subprocess.run([*launcher, *arguments], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"batch with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    with open(outdir / "cohort.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    finished = [row for row in rows if row["status"] == "done"]
    return {
        "processes": processes,
        "threads": threads or "auto",
        "cases": len(rows),
        "done": len(finished),
        "wall_s": round(wall, 1),
        "cases_per_hour": round(3600 * len(finished) / wall, 1),
        "case_seconds": {row["case"]: float(row["seconds"]) for row in finished},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", type=Path)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="threads per process to try (0: cores / processes, the batch default)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cases = args.cases or default_cases()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cohort-bench-") as folder:
        model = args.model or _random_default_model(Path(folder) / "model.pt")
        results = []
        for processes in args.processes:
            for threads in args.threads:
                run = Path(folder) / f"p{processes}t{threads}"
                run.mkdir()
                results.append(run_batch(cases, model, processes, run / "out", args.device, threads or None))
    baseline = results[0]["cases_per_hour"]
    print(
        f"{len(cases)} CTs, model {'random lite (default config)' if not args.model else args.model}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(f"{'processes':>9} {'threads':>8} {'wall s':>8} {'cases/hour':>11} {'speed-up':>9}")
    for result in results:
        print(
            f"{result['processes']:>9} {result['threads']:>8} {result['wall_s']:>8.1f} "
            f"{result['cases_per_hour']:>11.1f} {result['cases_per_hour'] / baseline:>9.2f}"
        )
    print(
        "seconds per case (1st run): "
        + ", ".join(f"{k} {v:.1f}" for k, v in results[0]["case_seconds"].items())
    )
    if args.json:
        args.json.write_text(json.dumps({"cases": [str(c) for c in cases], "results": results}, indent=2))
    return 0


def _random_default_model(path: Path) -> Path:
    from liver_e2net.checkpoint import random_checkpoint, save_checkpoint
    from liver_e2net.config import lite_config

    return save_checkpoint(random_checkpoint(lite_config()), path)


if __name__ == "__main__":
    sys.exit(main())
