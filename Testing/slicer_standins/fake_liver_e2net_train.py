"""A scripted stand-in for `python -m liver_e2net train` in training-panel tests: same arguments, line protocol and
run-folder files (metrics.jsonl, trainer_state.pt, best.pt), no network, so progress, stop, resume and failures can
be tested deterministically and fast. The real trainer is exercised by the module's self-test.

FAKE_TRAIN selects the behaviour:
  ok    --epochs epochs of stage 1 then stage 2 (0.2 s each), best.pt copied from FAKE_TRAIN_MODEL, "done".
  slow  like ok but 1 s per epoch, for Stop: SIGINT ends it as the trainer does (error line, exit code 130).
  oom   a CUDA out-of-memory traceback on stderr, exit code 1.
  die   one epoch, then the process kills itself (SIGKILL), as the kernel's OOM killer would.
  fail  the core's failure protocol: an error line on stdout, the message on stderr, exit code 2.
Its --data must be a JSON list whose files exist (the real `train` reads it in the self-test); any other command
(`check-data`) is the real `liver_e2net`'s.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

stopRequested = []


def emit(stage, fraction, message="", **extra):
    print(json.dumps({"stage": stage, "fraction": fraction, "message": message, **extra}), flush=True)


def main():
    if sys.argv[1:2] != ["train"]:
        from liver_e2net.cli import main as realCli

        sys.exit(realCli(sys.argv[1:]))
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("-o", "--output")
    parser.add_argument("--resume")
    parser.add_argument("--data")
    parser.add_argument("--epochs", type=int, default=2)
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_TRAIN", "ok")
    if args.data:  # the export's list: {"name", "image", "label"} entries, paths relative to the list
        listing = Path(args.data)
        for entry in json.loads(listing.read_text()):
            missing = [entry[key] for key in ("image", "label") if not (listing.parent / entry[key]).exists()]
            if missing or not entry["name"]:
                sys.exit(f"bad entry in {listing}: {entry}")
    output = Path(args.resume or args.output)
    output.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, lambda signum, frame: stopRequested.append(signum))
    if mode == "oom":
        print("Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
              "2.00 GiB", file=sys.stderr)
        sys.exit(1)
    if mode == "fail":
        emit("error", 1.0, "training data not found: /nowhere")
        print("liver-e2net train: error: training data not found: /nowhere", file=sys.stderr)
        sys.exit(2)
    metrics = output / "metrics.jsonl"
    done = len(metrics.read_text().splitlines()) if args.resume and metrics.exists() else 0
    total = 2 * args.epochs
    for index in range(done, total):
        stage, epoch = f"stage{1 + index // args.epochs}", 1 + index % args.epochs
        for step in (1, 2):
            time.sleep(1.0 if mode == "slow" else 0.1)
            emit(stage, (index + step / 2) / total, f"{stage} epoch {epoch} step {step}/2", epoch=epoch, step=step,
                 loss=1.0 / (index + step), val_dice_liver=None, val_dice_tumor=None, eta_s=(total - index) * 2)
            if stopRequested:
                emit("error", (index + step / 2) / total, f"stopped by SIGINT in stage {stage[-1]}: last.pt written, "
                     f"best.pt kept; continue with --resume {output}")
                sys.exit(130)
        record = {"stage": stage, "epoch": epoch, "train_loss": 1.0 / (index + 1), "val_loss": 1.2 / (index + 1),
                  "val_dice_liver": 0.5 + 0.1 * index, "val_dice_tumor": 0.1 * index if stage == "stage2" else None}
        with open(metrics, "a") as stream:
            stream.write(json.dumps(record) + "\n")
        (output / "trainer_state.pt").write_text("position")
        shutil.copy(os.environ["FAKE_TRAIN_MODEL"], output / "best.pt")
        (output / "train.log").write_text(f"{index + 1} epochs\n")
        emit(stage, (index + 1) / total, f"{stage} epoch {epoch}: val loss {record['val_loss']:.4f}", epoch=epoch,
             step=2, loss=record["train_loss"], val_dice_liver=record["val_dice_liver"],
             val_dice_tumor=record["val_dice_tumor"], eta_s=(total - index - 1) * 2)
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
    emit("done", 1.0, "done: best.pt validation Dice liver 0.8", val_dice_liver=0.8, val_dice_tumor=0.3)


if __name__ == "__main__":
    main()
