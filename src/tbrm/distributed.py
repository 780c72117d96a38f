"""Data parallelism: the rank, the world, and the few collectives an RL step needs.

Lightning's strategies (``trainer=ddp``, ``ddp_cpu``) start the processes and the process group
(gloo on CPU, NCCL on GPU); what runs inside a step uses ``torch.distributed`` through these
helpers, each the identity in a single process, so the pure tensor functions that call them
(``tbrm.objectives.advantages``) mean the same on one rank and on many:

    batch_moments        sums of a batch statistic over every rank (GRPO's ``scale_rewards=batch``,
                         PPO's whitening, REINFORCE++'s baseline)
    average_gradients    one all-reduce per model per optimizer step (``tbrm.update.Update``)
    reduce_metrics       the logged ``train/*`` values over every rank (docs/metrics.md)
    gather_objects       per-rank state (RNG, replay buffer) into one checkpoint

A rank's data is its shard of each step's global batch (``tbrm.data.loader``): every rank holds the
same number of rows, whole GRPO groups.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 without one, or with vLLM's single-process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def launch_rank() -> int:
    """This process's global rank as its launcher set it (Lightning's subprocess launcher, torchrun,
    Slurm), before any process group exists: 0 in the process a user started."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _comm_device() -> torch.device:
    """Where the group's collectives run: this rank's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launch_world() -> int:
    """The processes the launcher started (torchrun's ``WORLD_SIZE``, Slurm's ``SLURM_NTASKS``); 1 alone."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def all_sum(*values: torch.Tensor | float) -> list[torch.Tensor]:
    """Each value (a number or a tensor) summed over the ranks, in float64, in one all-reduce;
    returned on the first tensor's device."""
    device = next((v.device for v in values if torch.is_tensor(v)), torch.device("cpu"))
    tensors = [torch.as_tensor(v, dtype=torch.float64, device=device) for v in values]
    if world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(_comm_device())
    dist.all_reduce(flat)
    flat = flat.to(device)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def batch_moments(values: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(sum w, sum w x, sum w x^2)`` of ``values`` over every rank's rows (``weights``: 1 each),
    for a mean and variance over the whole data-parallel batch."""
    x = values.double()
    w = torch.ones_like(x) if weights is None else weights.double()
    return tuple(all_sum(w.sum(), (w * x).sum(), (w * x * x).sum()))


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over the ranks, in one all-reduce (a missing
    gradient counts as zero, so every rank sends the same tensors)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def weights_checksum(model: torch.nn.Module) -> float:
    """A number that equal weights share exactly (the sum of every parameter and of its square, in
    float64, in parameter order): the ranks compare theirs after training."""
    with torch.no_grad():
        whole = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]  # a shard: gathered
        return float(sum(p.double().sum() + p.double().square().sum() for p in whole))


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_metrics(metrics: dict[str, float], summed=(), maxed=()) -> dict[str, float]:
    """The step's metrics over every rank: the mean over the ranks that logged a key, the sum for
    ``summed`` keys (counts), the max for ``maxed`` (peak memory). Ranks may log different keys."""
    if world_size() == 1:
        return dict(metrics)
    keys = sorted(set().union(*gather_objects(sorted(metrics))))
    present = [float(k in metrics) for k in keys]
    values = [float(metrics.get(k, 0.0)) for k in keys]
    peaks = [float(metrics.get(k, float("-inf"))) for k in keys]
    total, count = all_sum(torch.tensor(values), torch.tensor(present))
    peak = torch.tensor(peaks, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    out = {}
    for i, key in enumerate(keys):
        if key in maxed:
            out[key] = float(peak[i])
        elif key in summed:
            out[key] = float(total[i])
        else:
            out[key] = float(total[i] / count[i].clamp(min=1))
    return out
