"""One device resolver for every command: auto | cpu | cuda[:N], plus the precision each device runs best at."""

from __future__ import annotations

import os

import torch

from .errors import UserInputError


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(
                f"device {name!r} asked for, but CUDA is not available here "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise UserInputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """The cores not busy with other work (1-minute load average). torch splits each step over all its threads
    and waits for the slowest: asking for a core another process holds made `segment` 2x slower on 2 busy cores
    here (up to 10-40x in the issue's report), while on a quiet machine every core helps."""
    cores = available_cores()
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        busy = 0
    return max(1, cores - busy)


def configure_threads(threads: int | None = None) -> int:
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    return threads


def limit_blas_threads(threads: int):
    """Cap the BLAS threads of numpy and scipy (OpenBLAS, MKL) in this process at `threads`; as a context manager,
    restore them on exit.

    Their default is one per core, and idle BLAS threads spin for cores other processes hold: a training's sample
    preparation (the tumor painter's matrix products) took 57 ms a stage-2 sample beside a second one on 2 cores,
    36 ms with one BLAS thread each (2-vCPU Xeon, 2026-12-04); on a 16-core GPU machine 17 such processes made
    130 ms a sample. Training only: importing threadpoolctl costs 25 ms of start-up that `segment` does not need."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads, user_api="blas")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """fp16 on CUDA; bf16 only on CPUs with AMX tiles (elsewhere bf16 is many times slower); else fp32."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return torch.bfloat16
    return None


def cuda_status() -> tuple[bool, str]:
    """(available, reason) for user interfaces that grey out the GPU choice."""
    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0)
    if torch.version.cuda is None:
        return False, f"this PyTorch ({torch.__version__}) is a CPU-only build"
    return False, "no CUDA device or driver found"
