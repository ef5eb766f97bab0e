"""Progress reporting: a tqdm bar on a terminal, or JSON lines on stdout for the Slicer panel.

Protocol (one object per line, stdout): `protocol.progress_record` - {"stage": str, "fraction": float in [0, 1]
overall, "message": str, ...extra fields}. Logs and errors go to stderr, so stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol

from .protocol import PROGRESS_MODES, progress_record

ProgressCallback = Callable[[str, float, str], None]


class Reporter(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "", **extra: Any) -> None: ...


def null_reporter(stage: str, fraction: float, message: str = "", **extra: Any) -> None:
    return None


class JsonlReporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, stage: str, fraction: float, message: str = "", **extra: Any) -> None:
        self.stream.write(json.dumps(progress_record(stage, fraction, message, **extra)) + "\n")
        self.stream.flush()


class BarReporter:
    """A single tqdm bar over the whole job (fraction in [0, 1]) on stderr."""

    def __init__(self, desc: str = "liver-e2net"):
        from tqdm import tqdm

        self.bar = tqdm(
            total=1000, desc=desc, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}"
        )

    def __call__(self, stage: str, fraction: float, message: str = "", **extra: Any) -> None:
        self.bar.set_postfix_str(f"{stage}: {message}" if message else stage, refresh=False)
        self.bar.update(max(0, int(fraction * 1000) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


def make_reporter(mode: str) -> Reporter:
    """mode: 'jsonl' | 'bar' | 'none' | 'auto' (bar on a terminal, none otherwise)."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "jsonl":
        return JsonlReporter()
    if mode == "bar":
        return BarReporter()
    return null_reporter


def add_progress_argument(parser) -> None:
    """The same --progress option for every long-running command."""
    parser.add_argument(
        "--progress",
        default="auto",
        choices=PROGRESS_MODES,
        help="progress bar (terminal), JSON lines on stdout (for the Slicer panel) or nothing",
    )
