"""Scale-out on Ray (optional extra: `pip install ray`): one actor per GPU (or per share of CPUs) in the cluster.

Ray places the actors and hands out the cases (ActorPool: the next case goes to the first free actor), so a slow
case never holds up a whole shard. Each actor loads the model once, from the checkpoint the driver puts in Ray's
object store (no model file needed on the workers); inputs and the batch folder must be on a file system every
node sees. The driver gets the records back and writes the cohort table.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from ..extras import require
from ..progress import Reporter, null_reporter
from .discovery import Case
from .runner import BatchOptions, run_case


class CaseWorker:
    """Ray actor body: one Segmenter for the actor's life, one `run_case` per call."""

    def __init__(
        self, checkpoint, device: str, threads: int, options: BatchOptions, outdir: str, model: dict[str, Any]
    ):
        from ..pipeline import Segmenter

        self.segmenter = Segmenter(
            checkpoint,
            device=device,
            threads=threads,
            tta=options.test_time_augmentation(),
            precision=options.precision,
        )
        self.options, self.outdir, self.model = options, Path(outdir), model
        self.process = {
            "engine": "ray",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.segmenter.device),
        }

    def run(self, case: Case) -> dict[str, Any]:
        return run_case(case, self.segmenter, self.options, self.outdir, self.model, process=self.process)


def worker_layout(
    resources: dict[str, float], workers: int | None, threads: int | None
) -> tuple[int, float, int]:
    """(actors, GPUs per actor, CPU threads per actor) for the cluster's resources: one actor per GPU if there are
    GPUs, else enough actors to keep every CPU busy with `threads` (default 4) threads each."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        count = workers or gpus
        return count, 1.0 if count <= gpus else gpus / count, threads or max(1, cpus // count)
    per_actor = threads or (max(1, cpus // workers) if workers else min(4, cpus))
    return workers or max(1, cpus // per_actor), 0.0, per_actor


def run_on_ray(
    cases: list[Case],
    checkpoint,
    options: BatchOptions,
    outdir: Path,
    model: dict[str, Any],
    address: str | None,
    workers: int | None,
    threads: int | None,
    device: str = "auto",
    progress: Reporter = null_reporter,
) -> list[dict[str, Any]]:
    if not cases:
        return []
    ray = require("ray", "--engine ray (else run locally or with torchrun)")
    from ray.util import ActorPool
    ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False)
    try:
        count, gpus, per_actor = worker_layout(ray.cluster_resources(), workers, threads)
        actor = ray.remote(num_cpus=per_actor, num_gpus=gpus)(CaseWorker)
        device = device if device != "auto" else ("cuda" if gpus else "cpu")
        shared = ray.put(checkpoint)
        pool = ActorPool(
            [
                actor.remote(shared, device, per_actor, options, str(outdir), model)
                for _ in range(min(count, len(cases)))
            ]
        )
        records = []
        for record in pool.map_unordered(lambda worker, case: worker.run.remote(case), cases):
            records.append(record)
            progress(
                "case",
                len(records) / len(cases),
                f"{record['case']}: {record['status']}",
                case=record["case"],
                status=record["status"],
                index=len(records),
                total=len(cases),
            )
        return records
    finally:
        ray.shutdown()
