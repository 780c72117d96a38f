"""Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300), with the
variants researchers use (Dr. GRPO, arXiv 2503.20783; DAPO, arXiv 2503.14476).

G completions per prompt; each completion's advantage is its reward relative to its group
(DeepSeekMath, Sec. 4.1.2, outcome supervision):

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)          scale_rewards = group
    A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)          scale_rewards = batch
    A_i =  r_i - mean(r_group)                                  scale_rewards = none (Dr. GRPO)

and every token of the completion shares it. The loss (DeepSeekMath, Eq. 3) is the clipped
surrogate against the behaviour policy plus a k3 estimate of the KL to the reference (Eq. 4):

    L = agg_{i,t} [ -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps_low, 1 + eps_high) A_i)
                    + beta * (pi_ref / pi_theta - log(pi_ref / pi_theta) - 1) ]

with rho = pi_theta / pi_behaviour per token, and ``agg`` one of the loss aggregation modes of
``objectives.common.aggregate_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tbrm.objectives.base import Experience, Objective, check_choice, check_number, check_policy_gradient
from tbrm.objectives.common import aggregate_loss, clipped_surrogate, kl_estimate, masked_mean

SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages of ``rewards`` (batch,), rows grouped as ``i*G .. i*G+G-1``.

    The standard deviation is the unbiased one (as ``torch.std``, TRL and verl). A group whose
    rewards are all equal gets advantage 0 for every member whatever the scaling.
    Returns ``(advantages (batch,), zero_std (num_groups,) bool)``.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    grouped = rewards.float().view(-1, group_size)
    centered = grouped - grouped.mean(1, keepdim=True)
    std = grouped.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(centered[:, :1])
    if scale_rewards == "group":
        centered = centered / (std + eps)
    elif scale_rewards == "batch":
        centered = centered / (rewards.float().std() + eps)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; choose one of {SCALE_REWARDS}.")
    return centered.reshape(-1), std.squeeze(1) == 0


def grpo_loss(
    log_probs: torch.Tensor,
    behavior_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
    loss_agg_mode: str = "token-mean",
    norm_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one (micro-)batch (DeepSeekMath, Eq. 3 with the Eq. 4 KL term).

    Args:
        log_probs: log pi_theta of the completion tokens, (batch, response_len).
        behavior_log_probs: log-probs of the same tokens under the policy that sampled them.
        advantages: one advantage per completion, (batch,).
        mask: 1 on completion tokens, (batch, response_len).
        epsilon, epsilon_high: the clip range [1 - epsilon, 1 + epsilon_high] (``epsilon_high``
            None: symmetric; DAPO's clip-higher uses e.g. 0.28).
        beta: coefficient of the k3 KL estimate to the reference; 0 skips it (no reference).
        ref_log_probs: log pi_ref of the tokens, needed when ``beta > 0``.
        loss_agg_mode, norm_length: see ``objectives.common.aggregate_loss``.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    pg_mat, ratio, clipped = clipped_surrogate(
        log_probs, behavior_log_probs, advantages.float()[:, None], epsilon, eps_high
    )
    loss_mat = pg_mat
    metrics = {}
    if beta > 0:
        if ref_log_probs is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_log_probs.")
        kl_mat = kl_estimate(log_probs, ref_log_probs, "k3")
        loss_mat = loss_mat + beta * kl_mat
        metrics["grpo/kl_k3"] = masked_mean(kl_mat.detach(), mask)
    loss = aggregate_loss(loss_mat, mask, loss_agg_mode, norm_length)
    metrics.update(
        {
            "grpo/pg_loss": aggregate_loss(pg_mat.detach(), mask, loss_agg_mode, norm_length),
            "grpo/clip_frac": masked_mean(clipped, mask),
            "grpo/ratio_mean": masked_mean(ratio, mask),
        }
    )
    return loss, metrics


@dataclass
class GRPO(Objective):
    """GRPO as a pluggable objective.

    Attributes:
        group_size: completions per prompt (``${rollout.n}`` in the config); must be >= 2.
        beta: k3 KL coefficient (>= 0); 0 loads no reference model.
        epsilon, epsilon_high: clip range; ``epsilon_high`` null means ``epsilon``.
        scale_rewards: ``group`` | ``batch`` | ``none``.
        loss_agg_mode: ``token-mean`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum-norm``.
        norm_length: the constant of ``seq-mean-token-sum-norm`` (``${rollout.max_new_tokens}``).
        num_iterations: optimizer passes over each rollout batch (the ratio leaves 1 after the first).
        num_minibatches: optimizer steps per pass.
        advantage_eps: added to the standard deviation.
        skip_zero_advantage: with beta = 0, a completion whose advantage is 0 (every member of a
            group with equal rewards) adds exactly nothing to the loss or its gradient (Eq. 3:
            both terms of the min are 0), so the update skips its backward pass; its logged
            metrics come from the log-probs and entropies the rollout recorded while sampling
            (one update per rollout: the policy is still the sampler), else from a forward pass
            without grad. The loss keeps its normaliser, so the gradient is unchanged.
    """

    group_size: int = 4
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    scale_rewards: str = "group"
    loss_agg_mode: str = "token-mean"
    norm_length: int | None = None
    num_iterations: int = 1
    num_minibatches: int = 1
    advantage_eps: float = 1e-4
    skip_zero_advantage: bool = True

    name = "grpo"
    needs_behavior_log_probs = True
    temperature_scaled = True

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(
                f"GRPO needs at least 2 completions per prompt to form a group (rollout.n={self.group_size!r}); "
                "set rollout.n=4 (or more), or use algorithm=tbrm, which works with one."
            )
        check_policy_gradient("GRPO", self, "num_iterations")
        check_choice("GRPO", "scale_rewards", self.scale_rewards, SCALE_REWARDS)
        check_number("GRPO", "advantage_eps", self.advantage_eps, low=0, strict=False)

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    @property
    def epochs(self) -> int:
        return self.num_iterations

    def prepare(self, exp: Experience) -> dict[str, torch.Tensor]:
        advantages, zero_std = group_advantages(exp["rewards"], self.group_size, self.scale_rewards, self.advantage_eps)
        exp["advantages"] = advantages
        return {"grpo/frac_zero_std": zero_std.float().mean(), "grpo/advantage_abs_mean": advantages.abs().mean()}

    def inert_rows(self, exp: Experience) -> torch.Tensor | None:
        if not self.skip_zero_advantage or self.beta > 0:
            return None
        return exp["advantages"] == 0

    def loss(self, exp: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return grpo_loss(
            exp["log_probs"],
            exp["behavior_log_probs"],
            exp["advantages"],
            exp["mask"],
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            beta=self.beta,
            ref_log_probs=exp.get("ref_log_probs"),
            loss_agg_mode=self.loss_agg_mode,
            norm_length=self.norm_length,
        )
