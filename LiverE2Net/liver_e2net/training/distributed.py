"""DistributedDataParallel in the nanoGPT way: torchrun's RANK / WORLD_SIZE / LOCAL_RANK select it, rank 0 alone
writes files and reports progress, and a single process is the same code with world_size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..devices import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a CPU tensor works with gloo and nccl alike: it is moved as needed)."""
        if not self.enabled:
            return tensor
        work = tensor.to(_backend_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device)

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any (a stop request must stop all of them together)."""
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def average_buffers(self, network: nn.Module) -> None:
        """BatchNorm running statistics differ per process; their mean makes every copy identical."""
        if not self.enabled:
            return
        for buffer in network.buffers():
            if buffer.is_floating_point():
                buffer.copy_(self.all_reduce_sum(buffer.detach().clone()) / self.world_size)


def setup(device_name: str) -> tuple[Distributed, torch.device]:
    """Joins the process group when started by torchrun; the device is cuda:LOCAL_RANK under DDP on CUDA."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return Distributed(), resolve_device(device_name)
    context = Distributed(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    )
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return context, device


def teardown(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(network: nn.Module, context: Distributed, device: torch.device) -> nn.Module:
    """DDP around `network` (SyncBatchNorm on CUDA only: gloo has no efficient all-reduce for it)."""
    if not context.enabled:
        return network
    if device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    # Buffers start equal (synced at init) and are averaged once per epoch, not broadcast at every step.
    return nn.parallel.DistributedDataParallel(
        network, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
    )


def _backend_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
