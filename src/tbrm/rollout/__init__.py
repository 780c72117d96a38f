"""Sampling from the policy: ``RolloutBatch``, the engines behind one interface, the step's data source."""

from tbrm.rollout.batch import RolloutBatch, completion_mask_from_ids
from tbrm.rollout.engine import ENGINES, RolloutEngine, generate_rollouts, make_engine

__all__ = ["ENGINES", "RolloutBatch", "RolloutEngine", "completion_mask_from_ids", "generate_rollouts", "make_engine"]
