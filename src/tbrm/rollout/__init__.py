"""Sampling from the policy."""

from tbrm.rollout.hf import RolloutBatch, completion_logprobs, completion_mask_from_ids, generate_rollouts

__all__ = ["RolloutBatch", "completion_logprobs", "completion_mask_from_ids", "generate_rollouts"]
