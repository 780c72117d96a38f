"""Proximal Policy Optimization for LLMs (Schulman et al. 2017, arXiv 1707.06347; the RLHF form of
Ouyang et al. 2022 and verl), with a separate critic.

Per-token rewards put the outcome reward on the last completion token and, with
``kl_penalty=reward``, a KL penalty on every token (Ouyang et al., Eq. 2):

    r_t = -beta * (log pi_old(a_t|s_t) - log pi_ref(a_t|s_t)) + [t = T] * r(tau)

Advantages come from generalised advantage estimation (Schulman et al. 2016, Eq. 16) on the
critic's values V_phi(s_t), with V after the last token 0:

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),    A_t = sum_l (gamma * lam)^l delta_{t+l},
    R_t = A_t + V(s_t)                                                      (the value target)

then whitened over the batch. The policy loss is PPO's clipped surrogate (PPO, Eq. 7) and the
value loss the clipped squared error 0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), as in
the PPO2 baselines and verl. With ``kl_penalty=loss`` the KL enters as a loss term
``beta * KL_estimate`` instead (the GRPO style); ``entropy_coef`` adds an entropy bonus,
aggregated as the policy loss is (``loss_agg_mode``). The value loss is always a token mean over
the minibatch, whatever ``loss_agg_mode``: ``loss`` returns it as its own term, so the critic's
gradient does not depend on how the minibatch is split into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tbrm.objectives.advantages import gae_advantages, outcome_token_rewards, whiten
from tbrm.objectives.base import Experience, Objective, check_choice, check_number, check_policy_gradient
from tbrm.objectives.common import (
    KL_ESTIMATORS,
    aggregate_loss,
    clipped_surrogate,
    kl_estimate,
    masked_mean,
    masked_sum,
)

KL_PENALTIES = ("reward", "loss")


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2), token mean.

    ``clip`` None: the plain squared error. Returns ``(loss, clip_frac)``.
    """
    values = values.float()
    err = (values - returns).pow(2)
    if clip is None:
        return 0.5 * masked_mean(err, mask), torch.zeros((), device=values.device)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    err_clipped = (clipped_values - returns).pow(2)
    return 0.5 * masked_mean(torch.maximum(err, err_clipped), mask), masked_mean((err_clipped > err).float(), mask)


@dataclass
class PPO(Objective):
    """PPO with a critic (a copy of the policy backbone with a scalar value head).

    Attributes:
        beta: KL coefficient (>= 0); 0 loads no reference model.
        kl_penalty: ``reward`` (per-token penalty in the reward) | ``loss`` (a KL loss term).
        kl_estimator: estimator of the ``loss`` form, ``k1`` | ``k2`` | ``k3``.
        gamma, lam: GAE discount and lambda.
        epsilon, epsilon_high: policy clip range; ``epsilon_high`` null means ``epsilon``.
        clip_ratio_c: dual-clip bound (> 1) for negative advantages; null: off.
        value_clip: clip range of the value loss (null: none).
        entropy_coef: entropy bonus coefficient.
        whiten_advantages: normalise advantages over the batch.
        epochs, num_minibatches: passes over each rollout batch and steps per pass.
        loss_agg_mode, norm_length: aggregation of the policy loss (``objectives.common``).
        critic_lr: the critic's learning rate (its own AdamW, same schedule as the policy).
    """

    beta: float = 0.05
    kl_penalty: str = "reward"
    kl_estimator: str = "k3"
    gamma: float = 1.0
    lam: float = 0.95
    epsilon: float = 0.2
    epsilon_high: float | None = None
    clip_ratio_c: float | None = None
    value_clip: float | None = 0.2
    entropy_coef: float = 0.0
    whiten_advantages: bool = True
    epochs: int = 1
    num_minibatches: int = 1
    loss_agg_mode: str = "token-mean"
    norm_length: int | None = None
    critic_lr: float = 1e-4

    name = "ppo"
    needs_behavior_log_probs = True
    needs_critic = True
    temperature_scaled = True

    def __post_init__(self) -> None:
        check_policy_gradient("PPO", self)
        check_choice("PPO", "kl_penalty", self.kl_penalty, KL_PENALTIES)
        check_choice("PPO", "kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_number("PPO", "gamma", self.gamma, low=0, strict=False)
        check_number("PPO", "lam", self.lam, low=0, strict=False)
        if self.gamma > 1 or self.lam > 1:
            raise ValueError(f"algorithm.gamma and algorithm.lam must be in [0, 1] (got {self.gamma}, {self.lam}).")
        if self.value_clip is not None:
            check_number("PPO", "value_clip", self.value_clip, low=0)
        check_number("PPO", "entropy_coef", self.entropy_coef, low=0, strict=False)
        check_number("PPO", "critic_lr", self.critic_lr, low=0)

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    @property
    def needs_entropy_grad(self) -> bool:
        return self.entropy_coef > 0

    @property
    def metric_modes(self) -> dict[str, str]:
        return {"ppo/value_loss": "token-mean", "ppo/value_clip_frac": "token-mean"}

    def prepare(self, exp: Experience) -> dict[str, torch.Tensor]:
        mask = exp["mask"].float()
        token_rewards = outcome_token_rewards(exp["rewards"], mask)
        metrics = {}
        if self.beta > 0 and self.kl_penalty == "reward":
            kl = (exp["behavior_log_probs"].float() - exp["ref_log_probs"].float()) * mask  # k1 per token
            token_rewards = token_rewards - self.beta * kl
            metrics["ppo/kl_penalty"] = (self.beta * masked_sum(kl, mask)).mean()
        advantages, returns = gae_advantages(token_rewards, exp["old_values"], mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = whiten(advantages, mask)
        exp["advantages"], exp["returns"] = advantages, returns
        metrics.update(
            {
                "ppo/values_mean": masked_mean(exp["old_values"].float(), mask),
                "ppo/returns_mean": masked_mean(returns, mask),
            }
        )
        return metrics

    def loss(self, exp: Experience) -> tuple[torch.Tensor | dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        mask, mode = exp["mask"], self.loss_agg_mode
        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        old = exp.get("old_log_probs", exp["behavior_log_probs"])  # the trainer's own under rollout.is_correction
        pg_mat, ratio, clipped, lower = clipped_surrogate(
            exp["log_probs"], old, exp["advantages"], self.epsilon, eps_high, self.clip_ratio_c
        )
        if "is_weights" in exp:  # truncated IS of the rollout/trainer mismatch (common.truncated_is_weights)
            pg_mat = pg_mat * exp["is_weights"]
        pg_loss = aggregate_loss(pg_mat, mask, mode, self.norm_length)
        v_loss, v_clip_frac = value_loss(exp["values"], exp["old_values"], exp["returns"], mask, self.value_clip)
        policy = pg_loss
        metrics = {
            "ppo/pg_loss": pg_loss.detach(),
            "ppo/value_loss": v_loss.detach(),
            "ppo/value_clip_frac": v_clip_frac,
            "ppo/clip_frac": masked_mean(clipped, mask),
            "ppo/ratio_mean": masked_mean(ratio, mask),
        }
        if self.clip_ratio_c is not None:
            metrics["ppo/clip_frac_lower"] = masked_mean(lower, mask)
        if self.entropy_coef > 0:
            policy = policy - self.entropy_coef * aggregate_loss(exp["entropy"], mask, mode, self.norm_length)
        if self.beta > 0 and self.kl_penalty == "loss":
            kl = aggregate_loss(
                kl_estimate(exp["log_probs"], exp["ref_log_probs"], self.kl_estimator), mask, mode, self.norm_length
            )
            policy = policy + self.beta * kl
            metrics["ppo/kl_loss"] = kl.detach()
        # the critic has its own optimizer, so no value-loss coefficient
        if mode == "token-mean":
            return policy + v_loss, metrics
        return {mode: policy, "token-mean": v_loss}, metrics
