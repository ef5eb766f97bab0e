"""`liver-e2net` command line: each subcommand lives in liver_e2net.commands.<name> with register()."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from . import __version__
from .errors import UserInputError

COMMANDS = (
    "segment",
    "info",
    "benchmark",
    "evaluate",
    "synth_preview",
    "robustness",
    "train",
    "check_data",
    "export_model",
    "segment_batch",
    "train_fp_filter",
)
# Commands whose process has nothing left to do once main() returns (outputs closed, no workers): the console
# script ends them without the interpreter's teardown, which after `import torch` alone takes ~0.7 s on 2 cores,
# on every panel run. Not train or the cohort commands: their workers and atexit hooks need the normal exit.
HARD_EXIT_COMMANDS = ("segment", "info")


def named_command(argv: list[str]) -> str | None:
    """The subcommand `argv` names (module spelling), if any."""
    named = next((arg.replace("-", "_") for arg in argv if not arg.startswith("-")), None)
    return named if named in COMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every subcommand, or only the one `argv` names: a `segment` child (the panel's) then skips importing
    training, evaluation and the other commands' modules."""
    parser = argparse.ArgumentParser(
        prog="liver-e2net", description="Liver and liver-tumor segmentation of CT (E2Net)."
    )
    parser.add_argument("--version", action="version", version=f"liver-e2net {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    named = named_command(argv or [])
    for name in (named,) if named else COMMANDS:
        importlib.import_module(f"liver_e2net.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A child of a shell's background job inherits an ignored SIGINT; Ctrl-C and the panels' Stop (SIGINT)
        # must still reach segment and train, even before the trainer installs its own handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserInputError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        _report_error(args, str(error))
        return 2
    except KeyboardInterrupt:
        _report_error(args, "interrupted")
        return 130
    except BrokenPipeError:  # whoever read stdout went away (`| head`, a closed panel): nothing more to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"liver-e2net {args.command}: error: stdout was closed before the run ended", file=sys.stderr)
        return 1


def entry() -> None:
    """`liver-e2net` and `python -m liver_e2net`: main(), then the exit."""
    argv = sys.argv[1:]
    code = main(argv)
    if named_command(argv) not in HARD_EXIT_COMMANDS:
        sys.exit(code)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: Python's own exit would report it with status 120
        code = code or 120
    os._exit(code)


def _report_error(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "progress", None) == "jsonl":
        import json

        from .protocol import STAGE_ERROR, progress_record

        print(json.dumps(progress_record(STAGE_ERROR, 1.0, message)), flush=True)
    print(f"liver-e2net {args.command}: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    entry()
