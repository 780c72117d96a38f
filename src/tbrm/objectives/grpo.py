"""Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300), with the
variants researchers use (Dr. GRPO, arXiv 2503.20783; DAPO's clip-higher, arXiv 2503.14476; dual
clip), and the critic-free estimators that share its loss: RLOO (arXiv 2402.14740) and
REINFORCE++ (arXiv 2501.03262), as ``algorithm.advantage`` (verl's ``adv_estimator``).

Each completion gets one advantage from ``tbrm.objectives.advantages`` (GRPO: its reward relative
to its group, DeepSeekMath Sec. 4.1.2) shared by its tokens. The loss (DeepSeekMath, Eq. 3) is the
clipped surrogate against the behaviour policy plus a k3 estimate of the KL to the reference (Eq. 4):

    L = agg_{i,t} [ -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps_low, 1 + eps_high) A_i)
                    + beta * (pi_ref / pi_theta - log(pi_ref / pi_theta) - 1) ]

with rho = pi_theta / pi_behaviour per token, and ``agg`` one of the loss aggregation modes of
``objectives.common.aggregate_loss``. With ``rollout.is_correction`` the denominator of rho is the
trainer's recomputed log-prob and each surrogate term is weighted by the truncated importance
weight of the rollout/trainer mismatch (``objectives.common.truncated_is_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tbrm.objectives.advantages import ADVANTAGES, SCALE_REWARDS, group_advantages
from tbrm.objectives.base import Experience, Objective, check_choice, check_number, check_policy_gradient
from tbrm.objectives.common import aggregate_loss, clipped_surrogate, kl_estimate, masked_mean

DISPLAY = {"grpo": "GRPO", "rloo": "RLOO", "reinforce_pp": "REINFORCE++"}


def grpo_loss(
    log_probs: torch.Tensor,
    behavior_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    clip_ratio_c: float | None = None,
    beta: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
    loss_agg_mode: str = "token-mean",
    norm_length: int | None = None,
    is_weights: torch.Tensor | None = None,
    prefix: str = "grpo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one (micro-)batch (DeepSeekMath, Eq. 3 with the Eq. 4 KL term).

    Args:
        log_probs: log pi_theta of the completion tokens, (batch, response_len).
        behavior_log_probs: log-probs of the same tokens under the policy that sampled them.
        advantages: one advantage per completion, (batch,).
        mask: 1 on completion tokens, (batch, response_len).
        epsilon, epsilon_high: the clip range [1 - epsilon, 1 + epsilon_high] (``epsilon_high``
            None: symmetric; DAPO's clip-higher uses e.g. 0.28).
        clip_ratio_c: dual clip (``objectives.common.clipped_surrogate``); None: off.
        beta: coefficient of the k3 KL estimate to the reference; 0 skips it (no reference).
        ref_log_probs: log pi_ref of the tokens, needed when ``beta > 0``.
        loss_agg_mode, norm_length: see ``objectives.common.aggregate_loss``.
        is_weights: truncated importance weights of the rollout/trainer mismatch, (batch,
            response_len), multiplying each token's surrogate (``common.truncated_is_weights``;
            ``behavior_log_probs`` are then the trainer's own, recomputed); None: no correction.
        prefix: of the metrics' names (the algorithm's).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    pg_mat, ratio, clipped, lower = clipped_surrogate(
        log_probs, behavior_log_probs, advantages.float()[:, None], epsilon, eps_high, clip_ratio_c
    )
    if is_weights is not None:
        pg_mat = pg_mat * is_weights
    loss_mat = pg_mat
    metrics = {}
    if beta > 0:
        if ref_log_probs is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_log_probs.")
        kl_mat = kl_estimate(log_probs, ref_log_probs, "k3")
        loss_mat = loss_mat + beta * kl_mat
        metrics[f"{prefix}/kl_k3"] = masked_mean(kl_mat.detach(), mask)
    loss = aggregate_loss(loss_mat, mask, loss_agg_mode, norm_length)
    metrics[f"{prefix}/pg_loss"] = aggregate_loss(pg_mat.detach(), mask, loss_agg_mode, norm_length)
    metrics[f"{prefix}/clip_frac"] = masked_mean(clipped, mask)
    metrics[f"{prefix}/ratio_mean"] = masked_mean(ratio, mask)
    if clip_ratio_c is not None:
        metrics[f"{prefix}/clip_frac_lower"] = masked_mean(lower, mask)
    return loss, metrics


@dataclass
class GRPO(Objective):
    """The critic-free policy-gradient objective: GRPO, and RLOO or REINFORCE++ by ``advantage``.

    Attributes:
        group_size: completions per prompt (``${rollout.n}`` in the config): >= 2 for GRPO and RLOO.
        beta: k3 KL coefficient (>= 0); 0 loads no reference model.
        epsilon, epsilon_high: clip range; ``epsilon_high`` null means ``epsilon``.
        clip_ratio_c: dual-clip bound (> 1) for negative advantages; null: off.
        advantage: the estimator, a key of ``objectives.advantages.ADVANTAGES``:
            ``grpo`` | ``rloo`` | ``reinforce_pp``.
        scale_rewards: ``group`` | ``batch`` | ``none`` (Dr. GRPO), for ``advantage=grpo``.
        loss_agg_mode: ``token-mean`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum-norm``.
        norm_length: the constant of ``seq-mean-token-sum-norm`` (``${rollout.max_new_tokens}``).
        epochs: optimizer passes over each rollout batch (the ratio leaves 1 after the first).
        num_minibatches: optimizer steps per pass.
        advantage_eps: added to the standard deviation.
        skip_zero_advantage: with beta = 0, a completion whose advantage is 0 (every member of a
            group with equal rewards) adds exactly nothing to the loss or its gradient (Eq. 3:
            both terms of the min are 0), so the update skips its backward pass (``tbrm.update``).
            The loss keeps its normaliser, so the gradient is unchanged.
        name: the algorithm's name: its W&B tag and the prefix of its metrics.
    """

    group_size: int = 4
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    clip_ratio_c: float | None = None
    advantage: str = "grpo"
    scale_rewards: str = "group"
    loss_agg_mode: str = "token-mean"
    norm_length: int | None = None
    epochs: int = 1
    num_minibatches: int = 1
    advantage_eps: float = 1e-4
    skip_zero_advantage: bool = True
    name: str = "grpo"

    needs_behavior_log_probs = True
    temperature_scaled = True

    def __post_init__(self) -> None:
        owner = DISPLAY.get(self.name, self.name)
        check_choice(owner, "advantage", self.advantage, tuple(ADVANTAGES))
        least = ADVANTAGES[self.advantage].min_group
        if not isinstance(self.group_size, int) or self.group_size < least:
            raise ValueError(
                f"{owner} needs at least {least} completions per prompt to form a group "
                f"(rollout.n={self.group_size!r}); set rollout.n=4 (or more), or use algorithm=tbrm, which works "
                "with one."
            )
        check_policy_gradient(owner, self)
        check_choice(owner, "scale_rewards", self.scale_rewards, SCALE_REWARDS)
        check_number(owner, "advantage_eps", self.advantage_eps, low=0, strict=False)

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def prepare(self, exp: Experience) -> dict[str, torch.Tensor]:
        options = {"scale_rewards": self.scale_rewards, "advantage_eps": self.advantage_eps}
        advantages = ADVANTAGES[self.advantage].fn(exp["rewards"], exp["mask"], self.group_size, options)
        exp["advantages"] = advantages
        # groups whose rewards are all equal (with groups of one: every completion)
        _, zero_std = group_advantages(exp["rewards"], self.group_size, "none")
        metrics = {f"{self.name}/advantage_abs_mean": advantages.abs().mean()}
        if self.group_size > 1:
            metrics[f"{self.name}/frac_zero_std"] = zero_std.float().mean()
        return metrics

    def inert_rows(self, exp: Experience) -> torch.Tensor | None:
        if not self.skip_zero_advantage or self.beta > 0:
            return None
        return exp["advantages"] == 0

    def loss(self, exp: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return grpo_loss(
            exp["log_probs"],
            exp.get("old_log_probs", exp["behavior_log_probs"]),  # the trainer's own under rollout.is_correction
            exp["advantages"],
            exp["mask"],
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            clip_ratio_c=self.clip_ratio_c,
            beta=self.beta,
            ref_log_probs=exp.get("ref_log_probs"),
            loss_agg_mode=self.loss_agg_mode,
            norm_length=self.norm_length,
            is_weights=exp.get("is_weights"),
            prefix=self.name,
        )
