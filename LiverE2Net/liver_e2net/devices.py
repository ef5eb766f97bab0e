"""One device resolver for every command: auto | cpu | cuda[:N], plus the precision each device runs best at."""

from __future__ import annotations

import os

import torch

from .errors import UserInputError
from .protocol import PRECISIONS


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


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16 (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on). There bf16 convolutions
    run 1.5-2.2x faster than fp32 (2-vCPU Zen 4, 2026-12-04: lite 1.45x, paper 2.2x); without them oneDNN emulates
    bf16 and it is 7-120x slower (../shared/design/PERFORMANCE.md)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: fp32). auto: fp16 on CUDA, bf16 on CPUs with native
    bf16 (cpu_has_native_bf16), else fp32; fp32: full precision, the same result on every CPU."""
    if precision not in PRECISIONS:
        raise UserInputError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def dtype_name(dtype: torch.dtype | None) -> str:
    """'float32' for no autocast, else the autocast dtype's name: what reports and tables print."""
    return str(dtype or torch.float32).replace("torch.", "")


def cuda_status() -> tuple[bool, str]:
    """(available, reason) for user interfaces that grey out the GPU choice."""
    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0)
    if torch.version.cuda is None:
        return False, f"this PyTorch ({torch.__version__}) is a CPU-only build"
    return False, "no CUDA device or driver found"
