"""PPO: GAE against a naive loop, value clipping, the loss at ratio 1, reward shaping, config checks."""

import pytest
import torch

from tbrm.objectives import PPO, gae_advantages
from tbrm.objectives.ppo import outcome_token_rewards, value_loss, whiten


def naive_gae(rewards, values, length, gamma, lam):
    """GAE for one trajectory of ``length`` tokens, written as the textbook double sum."""
    adv = []
    for t in range(length):
        total = 0.0
        for k in range(t, length):
            next_v = values[k + 1] if k + 1 < length else 0.0
            delta = rewards[k] + gamma * next_v - values[k]
            total += (gamma * lam) ** (k - t) * delta
        adv.append(total)
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_naive_loop(gamma, lam):
    torch.manual_seed(0)
    lengths = [5, 2, 7, 1]
    mask = torch.zeros(4, 7)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        expected = naive_gae(rewards[i].tolist(), values[i].tolist(), n, gamma, lam)
        assert adv[i, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0
        torch.testing.assert_close(ret[i, :n], adv[i, :n] + values[i, :n])


def test_gamma_one_lambda_one_is_return_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, ret = gae_advantages(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.8, 0.5, 0.3])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])


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


def test_whiten_is_masked():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1.0, 1.0, 0.0]]))
    assert w.tolist()[0] == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


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
    with pytest.raises(ValueError, match="ppo_epochs"):
        PPO(ppo_epochs=0)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        PPO(loss_agg_mode="mean")
