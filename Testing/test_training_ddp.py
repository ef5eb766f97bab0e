"""DistributedDataParallel on CPU: two gloo processes train a few steps and end with identical networks."""

from __future__ import annotations

import dataclasses
import os
import socket

import torch
import torch.multiprocessing as mp
from liver_e2net.checkpoint import load_checkpoint
from test_training import QUICK, TINY, phantom


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One torchrun-like process: the environment torchrun would set, then the ordinary training entry point."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    from liver_e2net.training import Trainer

    cases = [phantom("a"), phantom("b", 1), phantom("c", 2)]
    config = dataclasses.replace(QUICK, synthetic_tumors=0.5)
    trainer = Trainer(
        cases, f"{folder}/run", config, model_config=TINY, device="cpu", cache=f"{folder}/cache"
    )
    result = trainer.run()
    states = {stage: network.state_dict() for stage, network in trainer.networks.items()}
    torch.save({"states": states, "dice": result.validation_dice}, f"{folder}/rank{rank}.pt")


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert ranks[0]["dice"] == ranks[1]["dice"]  # validation sums were all-reduced
    for stage in (1, 2):
        zero, one = ranks[0]["states"][stage], ranks[1]["states"][stage]
        for name, value in zero.items():  # parameters and BatchNorm statistics alike
            torch.testing.assert_close(one[name], value, rtol=0, atol=0, msg=f"stage {stage} {name}")
    written = load_checkpoint(tmp_path / "run" / "last.pt")  # rank 0 alone wrote the files
    for name, value in written.stage2.items():
        torch.testing.assert_close(value, ranks[0]["states"][2][name], rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "train.log",
        "trainer_state.pt",
    ]
