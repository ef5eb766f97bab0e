"""Scale-out on torchrun: the launcher's RANK / WORLD_SIZE pick this process's share of the cases.

No scheduler of our own: torchrun starts the processes (on one or many machines), each takes its share of the
cases (dealt by cost, the number of slices, as both stages run per slice: the ranks finish at about the same
time), writes its cases' records, and rank 0 gathers the rows over a gloo process group (CPU only, so it works
with or without GPUs) and writes the cohort table. Without torchrun the world is one process.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from ..devices import default_threads

T = TypeVar("T")
GROUP_TIMEOUT = datetime.timedelta(days=7)  # rank 0 waits at the gather for the slowest rank's whole share


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Shard:
        """torchrun's variables; missing ones mean a single process."""
        world = int(environ.get("WORLD_SIZE", 1))
        shard = cls(
            int(environ.get("RANK", 0)),
            world,
            int(environ.get("LOCAL_RANK", 0)),
            int(environ.get("LOCAL_WORLD_SIZE", world)),
        )
        if not (0 <= shard.rank < shard.world and 0 <= shard.local_rank < shard.local_world):
            raise ValueError(f"inconsistent torchrun environment: {shard}")
        return shard

    def take(self, items: Sequence[T], costs: Sequence[float] | None = None) -> list[T]:
        """This rank's items, in their order. Without costs: every world-th item (i % world == rank). With costs:
        longest first to the least loaded rank, so one rank does not get all the large CTs; every rank computes
        the same split from the same list, so nothing needs to be sent."""
        if costs is None:
            return list(items[self.rank :: self.world])
        loads = [0.0] * self.world
        mine = set()
        for index in sorted(range(len(items)), key=lambda i: (-costs[i], i)):
            rank = loads.index(min(loads))
            loads[rank] += costs[index]
            if rank == self.rank:
                mine.add(index)
        return [item for index, item in enumerate(items) if index in mine]

    @property
    def distributed(self) -> bool:
        return self.world > 1


def rank_device(requested: str, shard: Shard) -> str:
    """'auto' spreads the processes of a machine over its GPUs (local rank modulo GPU count)."""
    import torch

    if requested == "auto" and torch.cuda.is_available():
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    return requested


def rank_threads(requested: int | None, shard: Shard) -> int:
    """The cores not busy with other work (as `segment` picks them) divided among this machine's processes, so
    N processes never oversubscribe the CPU. The ranks start together, before their own load shows in the load
    average, so the division is still needed."""
    return requested or max(1, default_threads() // shard.local_world)


@contextmanager
def process_group(shard: Shard) -> Iterator[None]:
    """A gloo group for the duration of the batch (nothing to do for a single process)."""
    if not shard.distributed:
        yield
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world, timeout=GROUP_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather_to_rank0(shard: Shard, items: list[Any]) -> list[Any]:
    """Every rank's items, concatenated in rank order, on rank 0 (other ranks get [])."""
    if not shard.distributed:
        return list(items)
    import torch.distributed as dist

    gathered: list[list[Any]] | None = [[] for _ in range(shard.world)] if shard.rank == 0 else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if gathered is not None else []
