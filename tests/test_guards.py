"""Guards of the RL step: a reward that is not a finite number, a non-finite loss or gradient, never
reach the weights; they stop the run naming what went wrong, or are counted (guard.* options)."""

import math

import pytest
import torch
from test_module import fit, make

from tbrm.objectives import TBRM
from tbrm.rewards.scoring import score, score_counted


def weights(module):
    return {k: v.clone() for k, v in module.policy.state_dict().items()}


def unchanged(module, before):
    return all(torch.equal(before[k], v) for k, v in module.policy.state_dict().items())


def nan_reward(completions, answers):
    return [math.nan if i == 3 else 0.0 for i in range(len(completions))]


def none_reward(completions, answers):
    return None


@pytest.mark.parametrize(
    "fn,message",
    [
        (nan_reward, r"reward function 'nan_reward' returned nan for row 3 \(completion '.*', answer '.*'\)"),
        (lambda c, a: [math.inf] * len(c), "returned inf for row 0"),
        (lambda c, a: [None] * len(c), "returned None for row 0"),
        (lambda c, a: ["1.0"] * len(c), "returned '1.0' for row 0"),
        (none_reward, "reward function 'none_reward' returned NoneType None; it must return a list of"),
    ],
)
def test_a_bad_reward_stops_the_step_before_any_update(tiny_model_dir, fn, message):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=fn)
    before = weights(module)
    with pytest.raises((ValueError, TypeError), match=message):
        fit(module, steps=1)
    assert unchanged(module, before)


def test_invalid_rewards_scored_zero_and_counted_when_asked(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=nan_reward, invalid_reward="zero")
    _, metrics = fit(module, steps=2)
    assert [m["train/invalid_rewards"] for m in metrics] == [1.0, 2.0]  # one NaN row per step, cumulative
    assert all(math.isfinite(m["train/loss"]) for m in metrics)
    assert score_counted(nan_reward, list("abcd"), list("1234"), invalid="zero") == ([0.0] * 4, 1)
    assert score(lambda c, a: [1, True, 0.5], ["x", "y", "z"], ["1", "2", "3"]) == [1.0, 1.0, 0.5]


class NanLoss(TBRM):
    """TBRM whose loss turns NaN from the ``after``-th call on (a stand-in for a diverged update)."""

    def __init__(self, after: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.calls, self.after = 0, after

    def loss(self, exp):
        loss, metrics = super().loss(exp)
        self.calls += 1
        return (loss * math.nan if self.calls > self.after else loss), metrics


def test_a_nonfinite_loss_stops_the_run_before_the_optimizer_step(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, objective=NanLoss(beta=0.5))
    before = weights(module)
    with pytest.raises(FloatingPointError, match=r"step 0: non-finite loss nan; nothing was applied to the weights"):
        fit(module, steps=1)
    assert unchanged(module, before)


def test_nonfinite_updates_are_dropped_and_counted_when_asked(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, objective=NanLoss(beta=0.5), nonfinite="skip")
    before = weights(module)
    trainer, metrics = fit(module, steps=2)
    assert trainer.global_step == 2 and [m["train/nonfinite_skipped"] for m in metrics] == [1.0, 2.0]
    assert unchanged(module, before)  # AdamW stepped with no gradients: no parameter moved
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
