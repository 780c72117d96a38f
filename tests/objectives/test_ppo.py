"""PPO: value clipping, the loss at ratio 1, reward shaping, config checks."""

import pytest
import torch

from tbrm.objectives import PPO, outcome_token_rewards
from tbrm.objectives.ppo import value_loss


def test_value_clipping_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[1.0, -1.0]])
    values = torch.tensor([[0.5, 0.1]])
    loss, frac = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 1: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64 (the max)
    # token 2: unclipped (0.1+1)^2 = 1.21, clipped value 0.1 is inside the range -> 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert frac.item() == pytest.approx(0.5)
    plain, _ = value_loss(values, old, returns, torch.ones(1, 2), clip=None)
    assert plain.item() == pytest.approx(0.5 * (0.25 + 1.21) / 2)


def test_outcome_reward_sits_on_the_last_token_and_kl_penalty_on_every_token():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert outcome_token_rewards(torch.tensor([1.0, 2.0]), mask).tolist() == [[0, 0, 1, 0], [2, 0, 0, 0]]
    objective = PPO(beta=0.5, gamma=1.0, lam=1.0, whiten_advantages=False)
    exp = {
        "rewards": torch.tensor([1.0, 0.0]),
        "mask": mask,
        "behavior_log_probs": torch.full((2, 4), -1.0),
        "ref_log_probs": torch.full((2, 4), -1.5),  # log-ratio 0.5 per token
        "old_values": torch.zeros(2, 4),
    }
    metrics = objective.prepare(exp)
    # token rewards row 1: -0.25, -0.25, 1 - 0.25 -> returns-to-go 0.25, 0.5, 0.75
    assert exp["returns"][0].tolist() == pytest.approx([0.25, 0.5, 0.75, 0.0])
    assert exp["returns"][1].tolist() == pytest.approx([-0.25, 0.0, 0.0, 0.0])
    assert metrics["ppo/kl_penalty"].item() == pytest.approx(0.5 * (3 * 0.5 + 0.5) / 2)


def test_ratio_one_gives_minus_mean_advantage_plus_value_loss():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    exp = {
        "mask": mask,
        "log_probs": torch.zeros(2, 2),
        "behavior_log_probs": torch.zeros(2, 2),
        "advantages": adv,
        "values": torch.tensor([[0.5, 0.5], [0.0, 0.0]]),
        "old_values": torch.tensor([[0.5, 0.5], [0.0, 0.0]]),
        "returns": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        "entropy": torch.ones(2, 2),
    }
    loss, metrics = PPO(beta=0.0).loss(exp)
    pg = -(1 + 2 + 3) / 3
    v = 0.5 * (0.25 + 0.25 + 1.0) / 3
    assert metrics["ppo/pg_loss"].item() == pytest.approx(pg)
    assert metrics["ppo/value_loss"].item() == pytest.approx(v)
    assert loss.item() == pytest.approx(pg + v)
    loss_ent, _ = PPO(beta=0.0, entropy_coef=0.1).loss(exp)
    assert loss_ent.item() == pytest.approx(pg + v - 0.1)


def test_kl_as_a_loss_term():
    exp = {
        "mask": torch.ones(1, 1),
        "log_probs": torch.log(torch.tensor([[0.5]])),
        "behavior_log_probs": torch.log(torch.tensor([[0.5]])),
        "ref_log_probs": torch.log(torch.tensor([[0.25]])),
        "advantages": torch.zeros(1, 1),
        "values": torch.zeros(1, 1),
        "old_values": torch.zeros(1, 1),
        "returns": torch.zeros(1, 1),
    }
    loss, metrics = PPO(beta=0.2, kl_penalty="loss", kl_estimator="k3").loss(exp)
    k3 = 0.5 - 1 - torch.log(torch.tensor(0.5)).item()
    assert metrics["ppo/kl_loss"].item() == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.2 * k3)


def test_ppo_rejects_bad_settings_and_asks_for_a_critic():
    assert PPO().needs_critic and not PPO(beta=0.0).needs_reference
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        PPO(beta=-1)
    with pytest.raises(ValueError, match="epsilon must be a number > 0"):
        PPO(epsilon=0.0)
    with pytest.raises(ValueError, match="kl_penalty"):
        PPO(kl_penalty="both")
    with pytest.raises(ValueError, match="gamma and algorithm.lam"):
        PPO(lam=1.5)
    with pytest.raises(ValueError, match="algorithm.epochs"):
        PPO(epochs=0)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        PPO(loss_agg_mode="mean")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_entropy_bonus_is_aggregated_as_the_policy_loss_and_the_value_loss_is_its_own_term(mode):
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    zeros = torch.zeros(2, 3)
    exp = {"mask": mask, "log_probs": zeros, "behavior_log_probs": zeros, "advantages": zeros, "entropy": entropy,
           "values": zeros, "old_values": zeros, "returns": mask.clone()}  # fmt: skip
    loss, metrics = PPO(beta=0.0, entropy_coef=0.1, loss_agg_mode=mode, norm_length=3).loss(exp)
    bonus = {"token-mean": 10 / 4, "seq-mean-token-mean": (2 + 4) / 2, "seq-mean-token-sum-norm": (6 / 3 + 4 / 3) / 2}
    value = 0.5 * 4 / 4  # 0.5 x (V - R)^2 = 0.5 on each of the 4 tokens: a token mean
    assert metrics["ppo/value_loss"].item() == pytest.approx(value)
    if mode == "token-mean":
        assert loss.item() == pytest.approx(-0.1 * bonus[mode] + value)
    else:  # the update weights each term by its own aggregation's share of the minibatch
        assert set(loss) == {mode, "token-mean"}
        assert loss[mode].item() == pytest.approx(-0.1 * bonus[mode]) and loss["token-mean"].item() == value
    with pytest.raises(ValueError, match="clip_ratio_c must be a number > 1"):
        PPO(clip_ratio_c=0.5)
