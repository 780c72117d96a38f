"""Trajectory Bellman Residual Minimization (Yuan et al., arXiv 2505.15311).

The policy's raw logits are its Q-values in "reward / beta" units: Q_theta(s, a) = logit_theta(s, a)
and V_theta(s) = logsumexp_a logit_theta(s, a). With the shifted reward
R_beta(s_h, a_h) = r(s_h, a_h) / beta + log pi_ref(a_h | s_h), the per-step Bellman residuals
Q_theta(s_h, a_h) - R_beta(s_h, a_h) - V_theta(s_{h+1}) of one trajectory telescope (paper, Eq. 6)
to a single residual per trajectory:

    delta(tau) = V_theta(s_1) + sum_h [log pi_theta(a_h|s_h) - log pi_ref(a_h|s_h)] - r(tau) / beta
    L_TBRM(theta) = mean_tau delta(tau)^2                                      (paper, Eq. 7)

because logit_theta(s_h, a_h) = V_theta(s_h) + log pi_theta(a_h | s_h). The trajectories may come
from any behaviour policy: there are no importance ratios, no clipping and no critic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tbrm.objectives.base import Experience, Objective, check_choice, check_number
from tbrm.objectives.common import masked_sum

INITIAL_VALUE_MODES = ("raw", "centered")


def tbrm_loss(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    initial_value: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    ref_initial_value: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TBRM loss, mean over trajectories of the squared trajectory Bellman residual (Eq. 7).

    Args:
        log_probs: log pi_theta(a_h | s_h) of the completion tokens, (batch, response_len).
        ref_log_probs: log pi_ref(a_h | s_h) of the same tokens, (batch, response_len).
        initial_value: V_theta(s_1), the logsumexp of the raw logits at the last prompt
            position, (batch,).
        rewards: the outcome reward r(tau) of each trajectory, (batch,).
        mask: 1 for completion tokens (EOS included when generated), 0 for padding,
            (batch, response_len).
        beta: the KL coefficient; the reward enters the residual as r / beta.
        ref_initial_value: V_ref(s_1) of the reference model, (batch,). When given it is
            subtracted from V_theta(s_1) (the "centered" variant): a per-prompt constant, so
            the minimiser's policy is unchanged, but the implied initial baseline
            beta * (V_theta - V_ref) starts near 0 instead of at an arbitrary logit scale.

    Returns:
        ``(loss, metrics)``: the scalar loss and detached diagnostics. The residual is computed
        in float32 whatever the input dtype, since r / beta can be hundreds of logit units.
    """
    if beta <= 0:
        raise ValueError(f"tbrm_loss: beta must be > 0 (got {beta}); rewards enter as r / beta.")
    mask = mask.float()
    log_ratio = masked_sum(log_probs.float() - ref_log_probs.float(), mask)  # (batch,)
    value = initial_value.float()
    if ref_initial_value is not None:
        value = value - ref_initial_value.float()
    residual = value + log_ratio - rewards.float() / beta  # delta(tau), (batch,)
    loss = residual.pow(2).mean()
    with torch.no_grad():
        implied_reward = beta * (value + log_ratio)
        metrics = {
            "tbrm/residual_abs_mean": residual.abs().mean(),
            "tbrm/residual_mean": residual.mean(),
            "tbrm/initial_value_mean": initial_value.float().mean(),
            "tbrm/log_ratio_sum_mean": log_ratio.mean(),
            "tbrm/implied_reward_mean": implied_reward.mean(),
            "tbrm/implied_reward_abs_error": (implied_reward - rewards.float()).abs().mean(),
        }
    return loss, metrics


@dataclass
class TBRM(Objective):
    """TBRM as a pluggable objective: needs only the policy and a frozen reference.

    One gradient step per rollout batch on raw logits (no temperature: the logits are the
    Q-values), any number of rollouts per prompt, any behaviour policy.

    Attributes:
        beta: KL coefficient (> 0); the paper uses 0.002 for Qwen2.5-Math.
        initial_value: ``raw`` uses V_theta(s_1) as in the paper; ``centered`` subtracts the
            reference model's V_ref(s_1) (see ``tbrm_loss``).
    """

    beta: float = 0.05
    initial_value: str = "centered"

    name = "tbrm"

    def __post_init__(self) -> None:
        check_number("TBRM", "beta", self.beta, low=0, hint=" Rewards enter the residual as r / beta; try 0.05.")
        check_choice("TBRM", "initial_value", self.initial_value, INITIAL_VALUE_MODES)

    @property
    def needs_reference(self) -> bool:
        return True

    def loss(self, exp: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one (micro-)batch; the mode decides whether V_ref(s_1) is subtracted."""
        return tbrm_loss(
            exp["log_probs"],
            exp["ref_log_probs"],
            exp["initial_value"],
            exp["rewards"],
            exp["mask"],
            beta=self.beta,
            ref_initial_value=exp["ref_initial_value"] if self.initial_value == "centered" else None,
        )
