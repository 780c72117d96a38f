"""Advantage estimators: pure functions from rewards (and values) to advantages.

Rows are completions, grouped by prompt: rows ``i*G .. i*G+G-1`` share the i-th prompt
(``G`` = ``group_size`` = ``rollout.n``). Outcome rewards are one number per completion, (batch,).

    group_advantages         GRPO (DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2) and Dr. GRPO
    leave_one_out            RLOO (Ahmadian et al., arXiv 2402.14740, Sec. 3.2)
    reinforce_pp_advantages  REINFORCE++ with a batch baseline (Hu, arXiv 2501.03262)
    outcome_token_rewards    the outcome reward on the last completion token
    gae_advantages           GAE (Schulman et al. 2016, Eq. 16), PPO
    whiten                   mean 0, variance 1 over the masked positions

Batch statistics (``scale_rewards=batch``, REINFORCE++'s baseline, ``whiten``) are over the whole
data-parallel batch: every rank's rows (``tbrm.distributed.batch_moments``; one rank: this batch).

``ADVANTAGES`` maps ``algorithm.advantage`` to the critic-free estimators a policy-gradient
objective takes from config (``tbrm.objectives.grpo.GRPO``): a new estimator is one function here
and one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tbrm.distributed import batch_moments

SCALE_REWARDS = ("group", "batch", "none")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    return rewards.float().view(-1, group_size)


def _batch_std(rewards: torch.Tensor) -> torch.Tensor:
    """The unbiased standard deviation of every rank's rewards."""
    n, s1, s2 = batch_moments(rewards)
    return ((s2 - s1 * s1 / n) / (n - 1).clamp(min=1.0)).clamp(min=0.0).sqrt().to(rewards.dtype)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages of ``rewards`` (batch,):

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)     scale_rewards = group (GRPO)
        A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)     scale_rewards = batch
        A_i =  r_i - mean(r_group)                             scale_rewards = none (Dr. GRPO, arXiv 2503.20783)

    The standard deviation is the unbiased one (as ``torch.std``, TRL and verl). A group whose
    rewards are all equal gets advantage 0 for every member whatever the scaling.
    Returns ``(advantages (batch,), zero_std (num_groups,) bool)``.
    """
    grouped = _grouped(rewards, group_size)
    centered = grouped - grouped.mean(1, keepdim=True)
    std = grouped.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(centered[:, :1])
    if scale_rewards == "group":
        centered = centered / (std + eps)
    elif scale_rewards == "batch":
        centered = centered / (_batch_std(rewards.float()) + eps)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; choose one of {SCALE_REWARDS}.")
    return centered.reshape(-1), std.squeeze(1) == 0


def leave_one_out(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's advantages (batch,): each completion's reward minus the mean of the other G - 1 of
    its group, A_i = r_i - (sum_j r_j - r_i) / (G - 1) = G / (G - 1) * (r_i - mean(r_group))."""
    if group_size < 2:
        raise ValueError("leave_one_out needs groups of at least 2 completions.")
    grouped = _grouped(rewards, group_size)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, group_size: int = 1, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++'s advantages (batch,) with outcome rewards: the reward, minus its group's mean
    when ``group_size > 1`` (REINFORCE++-baseline), given to every completion token (the return
    of each token with gamma = 1), then whitened over every completion token of the batch (the
    global batch baseline of arXiv 2501.03262, Sec. 3, as verl computes it). ``mask``:
    (batch, response_len); each row's tokens share one advantage, which this returns."""
    grouped = _grouped(rewards, group_size)
    centered = (grouped - grouped.mean(1, keepdim=True) if group_size > 1 else grouped).reshape(-1)
    tokens = mask.float().sum(1)  # each row's value counts once per completion token
    total, s1, s2 = batch_moments(centered, tokens)
    mean = s1 / total.clamp(min=1.0)
    var = (s2 - total * mean * mean).clamp(min=0.0) / (total - 1).clamp(min=1.0)  # unbiased, as verl's
    return ((centered - mean) * torch.rsqrt(var + eps)).to(centered.dtype)


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each trajectory's outcome reward (batch,) on its last completion token, (batch, response_len)."""
    mask = mask.float()
    last = (mask.sum(1).long() - 1).clamp(min=0)
    token_rewards = torch.zeros_like(mask)
    token_rewards[torch.arange(mask.shape[0], device=mask.device), last] = rewards.float()
    return token_rewards * mask


def gae_advantages(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions (GAE, Eq. 16), V after the
    last token 0:

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),    A_t = sum_l (gamma * lam)^l delta_{t+l}

    Args:
        token_rewards, values, mask: (batch, response_len); ``mask`` is 1 on a prefix of each row.
    Returns:
        ``(advantages, returns)``, both (batch, response_len) and 0 on padding; returns = A + V.
    """
    mask = mask.float()
    values = values.float() * mask
    token_rewards = token_rewards.float() * mask
    length = mask.shape[1]
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(length)):
        next_mask = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_value = values[:, t + 1] * next_mask if t + 1 < length else torch.zeros_like(running)
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shift and scale ``values`` (batch, response_len) to mean 0, variance 1 over the masked
    positions; 0 on padding."""
    n, s1, s2 = batch_moments(values, mask.float())
    mean = s1 / n.clamp(min=1.0)
    var = (s2 / n.clamp(min=1.0) - mean * mean).clamp(min=0.0)
    return ((values - mean) * torch.rsqrt(var + eps) * mask).to(values.dtype)


@dataclass(frozen=True)
class Estimator:
    """A critic-free estimator: ``fn(rewards, mask, group_size, options) -> advantages (batch,)``
    and the smallest group it works with."""

    fn: Callable[..., torch.Tensor]
    min_group: int


ADVANTAGES = {
    "grpo": Estimator(
        lambda r, m, g, o: group_advantages(r, g, o["scale_rewards"], o["advantage_eps"])[0], 2
    ),
    "rloo": Estimator(lambda r, m, g, o: leave_one_out(r, g), 2),
    "reinforce_pp": Estimator(
        lambda r, m, g, o: reinforce_pp_advantages(r, m, g), 1
    ),
}  # fmt: skip
