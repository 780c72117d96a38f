"""The collectives of tbrm.distributed on two real gloo processes, and their identity in one."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tbrm.distributed import (
    all_sum,
    average_gradients,
    batch_moments,
    gather_objects,
    launch_rank,
    reduce_metrics,
    weights_checksum,
    world_size,
)
from tbrm.objectives.advantages import group_advantages, reinforce_pp_advantages, whiten


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_data(rank: int) -> dict:
    """Rank ``rank``'s half of one batch (the full batch is both halves in rank order)."""
    g = torch.Generator().manual_seed(0)
    rewards = (torch.rand(8, generator=g) > 0.5).float()
    values = torch.randn(8, 5, generator=g)
    mask = torch.ones(8, 5)
    for i, n in enumerate([5, 2, 4, 1, 3, 5, 2, 4]):
        mask[i, n:] = 0
    half = slice(rank * 4, rank * 4 + 4)
    return {"rewards": rewards[half], "values": values[half], "mask": mask[half], "full": (rewards, values, mask)}


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        d = _rank_data(rank)
        result = {"world": world_size()}
        result["sum"] = [float(t) for t in all_sum(rank + 1.0, torch.tensor([rank, 10.0]))[1]]
        result["moments"] = [float(t) for t in batch_moments(d["rewards"])]
        result["group_batch"] = group_advantages(d["rewards"], 2, "batch")[0].tolist()
        result["whiten"] = whiten(d["values"], d["mask"]).tolist()
        result["reinforce_pp"] = reinforce_pp_advantages(d["rewards"], d["mask"], 2).tolist()
        model = torch.nn.Linear(3, 2)
        torch.manual_seed(0)
        model.weight.data.fill_(1.0)
        model.weight.grad = torch.full_like(model.weight, float(rank))  # bias keeps no gradient
        average_gradients(list(model.parameters()))
        result["grad"] = model.weight.grad.tolist()
        result["bias_grad"] = model.bias.grad.tolist()
        result["checksum"] = weights_checksum(torch.nn.Linear(2, 2).requires_grad_(False).apply(_fill(rank)))
        metrics = {"train/loss": float(rank), "train/completions": 8.0, "perf/peak_mem_gb": float(rank)}
        if rank == 1:
            metrics["replay/size"] = 4.0  # a key only one rank logs
        result["metrics"] = reduce_metrics(metrics, summed=("train/completions",), maxed=("perf/peak_mem_gb",))
        result["gathered"] = gather_objects({"rank": rank})
        out[rank] = result
    finally:
        dist.destroy_process_group()


def _fill(rank: int):
    def fill(module):
        for p in module.parameters(recurse=False):
            p.fill_(0.5 + rank)

    return fill


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        return dict(out)


def test_sums_and_batch_statistics_cover_every_rank(two_ranks):
    rewards, values, mask = _rank_data(0)["full"]
    for rank in (0, 1):
        r = two_ranks[rank]
        assert r["world"] == 2 and r["sum"] == [1.0, 20.0]
        assert r["moments"] == pytest.approx([8.0, float(rewards.sum()), float(rewards.sum())])
    # each rank's part of the advantages equals that part of the one-process computation on the whole batch
    whole = {
        "group_batch": group_advantages(rewards, 2, "batch")[0],
        "whiten": whiten(values, mask),
        "reinforce_pp": reinforce_pp_advantages(rewards, mask, 2),
    }
    for key, expected in whole.items():
        joined = torch.tensor(two_ranks[0][key] + two_ranks[1][key])
        assert torch.allclose(joined, expected, atol=1e-6), key
        alone = {"group_batch": group_advantages(rewards[:4], 2, "batch")[0]}.get(key)
        if alone is not None:  # a per-rank statistic would have given something else
            assert not torch.allclose(torch.tensor(two_ranks[0][key]), alone, atol=1e-4)


def test_gradients_are_averaged_and_missing_ones_count_as_zero(two_ranks):
    for rank in (0, 1):
        assert two_ranks[rank]["grad"] == [[0.5] * 3] * 2
        assert two_ranks[rank]["bias_grad"] == [0.0, 0.0]


def test_checksums_differ_for_different_weights(two_ranks):
    assert two_ranks[0]["checksum"] != two_ranks[1]["checksum"]


def test_metrics_are_means_sums_and_maxima_over_the_ranks(two_ranks):
    for rank in (0, 1):
        m = two_ranks[rank]["metrics"]
        assert m == {"train/loss": 0.5, "train/completions": 16.0, "perf/peak_mem_gb": 1.0, "replay/size": 4.0}
        assert two_ranks[rank]["gathered"] == [{"rank": 0}, {"rank": 1}]


def test_one_process_is_the_identity(monkeypatch):
    assert world_size() == 1
    assert [float(t) for t in all_sum(2.0, 3.0)] == [2.0, 3.0]
    assert reduce_metrics({"a": 1.0}, summed=("a",)) == {"a": 1.0}
    assert gather_objects(7) == [7]
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launch_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launch_rank() == 3
