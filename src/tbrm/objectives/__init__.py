"""Objectives: pure functions from tensors to ``(loss, metrics)``, and their pluggable wrappers.

tbrm.py        TBRM (arXiv 2505.15311): ``tbrm_loss``, ``TBRM``
grpo.py        the critic-free clipped policy gradient: GRPO, RLOO, REINFORCE++ (``GRPO``)
ppo.py         PPO with a critic: ``PPO``
advantages.py  the advantage estimators (``ADVANTAGES``: what ``algorithm.advantage`` names)
common.py      masked reductions, KL estimators, loss aggregation, the clipped surrogate
"""

from tbrm.objectives.advantages import (
    ADVANTAGES,
    gae_advantages,
    group_advantages,
    leave_one_out,
    outcome_token_rewards,
    reinforce_pp_advantages,
    whiten,
)
from tbrm.objectives.base import Objective
from tbrm.objectives.common import aggregate_loss, kl_estimate, masked_mean, masked_sum, sequence_kl
from tbrm.objectives.grpo import GRPO, grpo_loss
from tbrm.objectives.ppo import PPO
from tbrm.objectives.tbrm import TBRM, tbrm_loss

__all__ = [
    "ADVANTAGES",
    "GRPO",
    "PPO",
    "TBRM",
    "Objective",
    "aggregate_loss",
    "gae_advantages",
    "group_advantages",
    "grpo_loss",
    "kl_estimate",
    "leave_one_out",
    "masked_mean",
    "masked_sum",
    "outcome_token_rewards",
    "reinforce_pp_advantages",
    "sequence_kl",
    "tbrm_loss",
    "whiten",
]
