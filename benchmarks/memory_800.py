"""Peak memory of `liver-e2net segment` on a tall (512x512x800) CT, for every output option the CLI offers.

Usage: .venv/bin/python benchmarks/memory_800.py --ct /work/shared/data/case01_ct.nii.gz [--work /tmp/mem800]
           [--slices 800] [--threads 1] [--only plain,probabilities]
Tiles the given CT along z to --slices slices (int16, its own pixel size) into --work (never into the repository:
the case must not be committed), runs `segment` once per option in a child process and prints a Markdown table of
the child's peak RSS (getrusage of the waited-for child, the same figure as `/usr/bin/time -v`) and wall seconds.
The aim (issue 16) is a peak of at most 4 GB for every option.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

GB = 1e9
# option name -> extra arguments of `segment`, the label map's suffix, and the input (LPS as tiled, or the same CT
# stored RAS: the probability map is then reoriented on the way back)
OPTIONS = {
    "plain": ([], ".nii.gz", "LPS"),
    "probabilities": (["--probabilities"], ".nii.gz", "LPS"),
    "probabilities, RAS-stored CT": (["--probabilities"], ".nii.gz", "RAS"),
    "probabilities .nrrd": (["--probabilities", "{work}/probabilities.nrrd"], ".nii.gz", "LPS"),
    "stl": (["--stl"], ".nii.gz", "LPS"),
    "report": (["--report", "{work}/report.json"], ".nii.gz", "LPS"),
    "seg.nrrd": ([], ".seg.nrrd", "LPS"),
    "tta multiscale": (["--tta", "multiscale"], ".nii.gz", "LPS"),
    "preview": (["--preview"], ".nii.gz", "LPS"),
}


def tall_ct(source: Path, target: Path, slices: int) -> Path:
    """The source CT repeated along z until it has `slices` slices: a whole-body-length scan of real anatomy."""
    if target.exists():
        return target
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    tiled = np.concatenate([array] * -(-slices // array.shape[0]))[:slices]
    tall = sitk.GetImageFromArray(tiled)
    tall.SetSpacing(image.GetSpacing())
    tall.SetOrigin(image.GetOrigin())
    tall.SetDirection(image.GetDirection())
    sitk.WriteImage(tall, str(target), useCompression=True)
    return target


def ras_copy(source: Path, target: Path) -> Path:
    """The same CT stored in RAS order (x and y flipped, the same voxels in space), as many NIfTI files are."""
    if not target.exists():
        sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(source)), [True, True, False]), str(target), True)
    return target


def measure(cts: dict[str, Path], work: Path, name: str, threads: int) -> tuple[float, float, int]:
    """(peak RSS in GB, wall seconds, exit code) of one `segment` run in a child process."""
    extra, suffix, orientation = OPTIONS[name]
    ct = cts[orientation]
    folder = work / "".join(c if c.isalnum() or c == "." else "_" for c in name)
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "liver_e2net",
        "segment",
        str(ct),
        "-o",
        str(folder / f"out{suffix}"),
        "--threads",
        str(threads),
        "--progress",
        "none",
        *(a.format(work=folder) for a in extra),
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    return usage.ru_maxrss * 1024 / GB, seconds, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, required=True, help="a CT to tile along z (e.g. case01_ct.nii.gz)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mem800"), help="scratch folder, not the repo")
    parser.add_argument("--slices", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated option names (default: all): " + ", ".join(OPTIONS))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ct = tall_ct(args.ct, args.work / f"tall_{args.slices}.nii.gz", args.slices)
    names = args.only.split(",") if args.only else list(OPTIONS)
    cts = {"LPS": ct}
    if any(OPTIONS[name][2] == "RAS" for name in names):
        cts["RAS"] = ras_copy(ct, args.work / f"tall_{args.slices}_ras.nii.gz")
    print(f"CT {ct} ({sitk.ReadImage(str(ct)).GetSize()}), threads {args.threads}", flush=True)
    print("| option | peak RSS GB | seconds |\n|---|---:|---:|", flush=True)
    for name in names:
        peak, seconds, code = measure(cts, args.work, name, args.threads)
        failed = "" if code == 0 else f" (exit {code})"
        print(f"| {name}{failed} | {peak:.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
