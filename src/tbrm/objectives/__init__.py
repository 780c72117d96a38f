"""Objectives: pure functions from tensors to ``(loss, metrics)``, and their pluggable wrappers."""

from tbrm.objectives.base import Objective
from tbrm.objectives.common import aggregate_loss, kl_estimate, masked_mean, masked_sum, sequence_kl
from tbrm.objectives.grpo import GRPO, group_advantages, grpo_loss
from tbrm.objectives.ppo import PPO, gae_advantages
from tbrm.objectives.tbrm import TBRM, tbrm_loss

__all__ = [
    "GRPO",
    "PPO",
    "TBRM",
    "Objective",
    "aggregate_loss",
    "gae_advantages",
    "group_advantages",
    "grpo_loss",
    "kl_estimate",
    "masked_mean",
    "masked_sum",
    "sequence_kl",
    "tbrm_loss",
]
