"""What every objective tells the LightningModule, so the module never branches on an algorithm.

An objective is a small dataclass built by Hydra from ``conf/algorithm/<name>.yaml``. It says
what an update needs (a frozen reference, a critic, log-probs at the sampling temperature) and
how often to update per rollout batch; ``prepare`` adds batch-level quantities (advantages,
returns) to the experience once per rollout batch, and ``loss`` maps one micro-batch of
experience to ``(loss, metrics)`` through the pure tensor functions of its module; ``loss`` is a
scalar aggregated with ``loss_agg_mode``, or a dict ``{aggregation mode: scalar}`` when its terms
aggregate differently (PPO's token-mean value loss), so that ``tbrm.update`` weights each term
by the micro-batch's share of the minibatch under its own mode.

Experience keys (tensors of shape (batch, response_len) unless noted):
    ``mask``, ``rewards`` (batch,), ``behavior_log_probs``: from the rollout;
    ``ref_log_probs``, ``ref_initial_value`` (batch,): the frozen reference, when needed;
    ``old_values``: the critic before the update, when needed;
    ``log_probs``, ``initial_value`` (batch,), ``entropy``, ``values``: the current forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

Experience = dict[str, torch.Tensor]


def check_number(owner: str, name: str, value, *, low: float | None = None, strict: bool = True, hint: str = ""):
    """Raise a ValueError naming ``algorithm.<name>`` unless ``value`` is a number above ``low``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low}"
        raise ValueError(f"algorithm.{name} must be a number{bound} for {owner} (got {value!r}).{hint}")


def check_choice(owner: str, name: str, value, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``algorithm.<name>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"algorithm.{name} must be one of {list(choices)} for {owner} (got {value!r}).")


def check_policy_gradient(owner: str, obj) -> None:
    """The settings GRPO and PPO share: beta >= 0, the clip range (and the dual clip), the loss
    aggregation, the number of passes and minibatches per rollout batch."""
    from tbrm.objectives.common import LOSS_AGG_MODES

    check_number(owner, "beta", obj.beta, low=0, strict=False, hint=" Use 0 for no KL term.")
    check_number(owner, "epsilon", obj.epsilon, low=0, hint=" The clip range is [1 - epsilon, 1 + epsilon_high].")
    if obj.epsilon_high is not None:
        check_number(owner, "epsilon_high", obj.epsilon_high, low=0)
    if obj.clip_ratio_c is not None:
        check_number(owner, "clip_ratio_c", obj.clip_ratio_c, low=1, hint=" The dual clip caps -A * ratio at -c * A; "
                     "verl uses 3.0, null turns it off.")  # fmt: skip
    check_choice(owner, "loss_agg_mode", obj.loss_agg_mode, LOSS_AGG_MODES)
    if obj.loss_agg_mode == "seq-mean-token-sum-norm":
        check_number(owner, "norm_length", obj.norm_length, low=0, hint=" Set it to rollout.max_new_tokens.")
    for key in ("epochs", "num_minibatches"):
        value = getattr(obj, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"algorithm.{key} must be an integer >= 1 for {owner} (got {value!r}).")


class Objective(ABC):
    """Defaults for the questions the module asks; each algorithm overrides what differs."""

    name = "objective"
    #: a critic (value model) is trained alongside the policy
    needs_critic = False
    #: the update uses the log-probs the behaviour policy gave its tokens (ratio-based objectives)
    needs_behavior_log_probs = False
    #: the update's log-probs are those of the sampling distribution (logits / temperature), as
    #: in TRL and verl, so ratios against the behaviour log-probs start at 1
    temperature_scaled = False
    #: how micro-batch losses combine (``token-mean`` weights them by tokens, otherwise by rows)
    loss_agg_mode = "seq-mean"
    #: passes over each rollout batch, and optimizer steps per pass
    epochs = 1
    num_minibatches = 1

    @property
    def needs_reference(self) -> bool:
        return False

    @property
    def metric_modes(self) -> dict[str, str]:
        """Metrics aggregated otherwise than ``loss_agg_mode`` (the update weights each micro-batch's
        value by its share of the minibatch under this mode). Default: none."""
        return {}

    @property
    def needs_entropy_grad(self) -> bool:
        return False

    def prepare(self, exp: Experience) -> dict[str, torch.Tensor]:
        """Add batch-level quantities to ``exp`` in place; return metrics. Default: nothing."""
        return {}

    def inert_rows(self, exp: Experience) -> torch.Tensor | None:
        """(batch,) bool, after ``prepare``: rows whose loss term and gradient are exactly zero
        whatever the parameters, whose backward pass the update skips. Default: None."""
        return None

    @abstractmethod
    def loss(self, exp: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, metrics)`` of one micro-batch of experience."""
