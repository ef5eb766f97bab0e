"""A scripted stand-in for `python -m liver_e2net segment` in panel tests: same arguments and line protocol, no
network, so progress, cancel and error display can be tested deterministically and fast.

FAKE_LIVER_E2NET selects the behaviour:
  ok    progress lines, then a real label map (an ellipsoid liver with two ball tumors on the input's grid, written
        with the core's own io and report code), the report, probabilities if asked, "done".
  warn  as ok, with two warnings in the report (as `segment` lists what the user should know about a run).
  slow  one progress line, a grandchild process, then sleeps: for cancel. Both pids go to FAKE_LIVER_E2NET_PIDS.
  fail  the core's failure protocol: an error line on stdout, the message on stderr, exit code 2.
  crash an unhandled exception: a Python traceback on stderr, exit code 1, no error line.
  empty "done" and exit code 0, but no output files: a child that lies must not crash the Slicer side.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def emit(stage, fraction, message=""):
    print(json.dumps({"stage": stage, "fraction": fraction, "message": message}), flush=True)


WARNINGS = ["first fake warning", "second fake warning"]


def segment(args, warnings=()):
    import SimpleITK as sitk
    from liver_e2net.io import write_labelmap
    from liver_e2net.report import case_report

    emit("load", 0.0, f"reading {args.input}")
    ct = sitk.ReadImage(args.input)
    for stage, fraction in (("stage1", 0.2), ("stage1", 0.35), ("stage2", 0.6), ("stage2", 0.9)):
        time.sleep(0.05)
        emit(stage, fraction, f"slice {round(fraction * 100)}/100")
    shape = np.array(sitk.GetArrayViewFromImage(ct).shape)  # (z, y, x)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = shape / 2
    label = np.zeros(shape, np.uint8)
    label[((z - centre[0]) / (shape[0] / 3)) ** 2 + ((y - centre[1]) / (shape[1] / 4)) ** 2
          + ((x - centre[2]) / (shape[2] / 4)) ** 2 <= 1] = 1
    if args.tumors:
        for offset in (-shape[2] / 8, shape[2] / 8):
            label[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2] - offset) ** 2 <= 9] = 2
    emit("write", 0.92, f"writing {args.output}")
    write_labelmap(label, ct, args.output)
    if args.probabilities:
        probabilities = np.stack([(label >= 1), (label == 2)], axis=-1).astype(np.float32)
        image = sitk.GetImageFromArray(probabilities, isVector=True)
        image.CopyInformation(ct)
        sitk.WriteImage(image, args.probabilities)
    report = {"input": args.input, "output": args.output, "model": {"path": args.model, "name": "fake"},
              "device": "cpu", "precision": "bfloat16", "threads": 1, "seconds": {"total": 0.3}, **case_report(label, ct), "warnings": list(warnings)}
    with open(args.report, "w", encoding="utf-8") as stream:
        json.dump(report, stream)
    emit("done", 1.0, "fake segmentation written")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["segment"])
    parser.add_argument("input")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--model")
    parser.add_argument("--device")
    parser.add_argument("--tta", choices=["none", "flip", "multiscale", "flip+multiscale"])
    parser.add_argument("--fp-filter", choices=["auto", "on", "off"])
    parser.add_argument("--report")
    parser.add_argument("--progress")
    parser.add_argument("--no-tumors", dest="tumors", action="store_false")
    parser.add_argument("--probabilities")
    args = parser.parse_args()
    mode = os.environ.get("FAKE_LIVER_E2NET", "ok")
    if mode == "slow":
        emit("load", 0.0, "loading")
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.environ["FAKE_LIVER_E2NET_PIDS"], "w", encoding="utf-8") as stream:
            stream.write(f"{os.getpid()} {grandchild.pid}")
        emit("stage1", 0.1, "slice 1/100")
        time.sleep(120)
    elif mode == "fail":
        message = f"{args.model} is not a readable Liver E2Net checkpoint; re-download or re-train the model"
        emit("error", 1.0, message)
        print(f"liver-e2net segment: error: {message}", file=sys.stderr)
        sys.exit(2)
    elif mode == "empty":
        emit("done", 1.0, "nothing written")
    elif mode == "crash":
        emit("load", 0.0, "loading")
        raise RuntimeError("CUDA error: out of memory")
    else:
        segment(args, WARNINGS if mode == "warn" else ())


if __name__ == "__main__":
    main()
