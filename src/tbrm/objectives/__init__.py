"""Objectives: pure functions from tensors to ``(loss, metrics)``."""

from tbrm.objectives.common import masked_mean, masked_sum, sequence_kl
from tbrm.objectives.tbrm import TBRM, tbrm_loss

__all__ = ["TBRM", "masked_mean", "masked_sum", "sequence_kl", "tbrm_loss"]
