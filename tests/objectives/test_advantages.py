"""Advantage estimators against hand-computed values: GRPO (group, batch, none), RLOO,
REINFORCE++, GAE against a naive loop, whitening; the registry algorithm.advantage reads."""

import math

import pytest
import torch

from tbrm.objectives.advantages import (
    ADVANTAGES,
    gae_advantages,
    group_advantages,
    leave_one_out,
    reinforce_pp_advantages,
    whiten,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv, zero_std = group_advantages(rewards, 4, "group", eps=0.0)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # unbiased std of [1, 0, 0, 0]
    assert adv[:4].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])
    std2 = math.sqrt(4 * 0.25 / 3)
    assert adv[4:].tolist() == pytest.approx([0.5 / std2, 0.5 / std2, -0.5 / std2, -0.5 / std2])
    assert zero_std.tolist() == [False, False]
    none, _ = group_advantages(rewards, 4, "none")
    assert none.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    batch, _ = group_advantages(rewards, 4, "batch", eps=0.0)
    torch.testing.assert_close(batch, none / rewards.std())


def test_ties_and_zero_variance_groups_get_zero_advantage():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0])
    for scale in ("group", "batch", "none"):
        adv, zero_std = group_advantages(rewards, 3, scale)
        assert adv[:6].abs().max() == 0.0 and torch.isfinite(adv).all()
        assert zero_std.tolist() == [True, True, False]
    adv, _ = group_advantages(rewards, 3, "group")
    assert adv[6] == adv[7] < 0 < adv[8]  # tied members share their advantage


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


def test_whiten_is_masked():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1.0, 1.0, 0.0]]))
    assert w.tolist()[0] == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_leave_one_out_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    # group 1: others' means 0, 1/3, 1/3, 1/3; group 2: 2/3, 2/3, 1, 2/3
    expected = [1.0, -1 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -1.0, 1 / 3]
    assert leave_one_out(rewards, 4).tolist() == pytest.approx(expected)
    assert leave_one_out(torch.tensor([1.0, 0.0]), 2).tolist() == [1.0, -1.0]  # G / (G - 1) x centred
    assert leave_one_out(torch.tensor([1.0, 1.0, 1.0]), 3).abs().max() == 0  # a tied group: no signal
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out(torch.tensor([1.0]), 1)


def test_reinforce_pp_whitens_over_the_batchs_tokens_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # 3, 1 and 2 tokens
    # token-weighted mean 3/6 = 0.5, unbiased variance (3 * 0.25 + 1 * 0.25 + 2 * 0.25) / (6 - 1) = 0.3
    std = math.sqrt(0.3)
    assert reinforce_pp_advantages(rewards, mask, eps=0.0).tolist() == pytest.approx(
        [0.5 / std, -0.5 / std, -0.5 / std]
    )
    # with groups (REINFORCE++-baseline) the group mean goes first: [0.5, -0.5 | 0, 0]
    grouped = reinforce_pp_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 2), group_size=2, eps=0.0)
    std = math.sqrt(4 * 0.25 / 7)  # 8 tokens: 4 at +-0.5, 4 at 0
    assert grouped.tolist() == pytest.approx([0.5 / std, -0.5 / std, 0.0, 0.0])


def test_the_registry_holds_each_estimator_with_its_smallest_group():
    assert set(ADVANTAGES) == {"grpo", "rloo", "reinforce_pp"}
    assert {k: e.min_group for k, e in ADVANTAGES.items()} == {"grpo": 2, "rloo": 2, "reinforce_pp": 1}
    rewards, mask = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.ones(4, 3)
    options = {"scale_rewards": "none", "advantage_eps": 1e-4}
    assert ADVANTAGES["grpo"].fn(rewards, mask, 4, options).tolist() == [0.75, -0.25, -0.25, -0.25]
    assert ADVANTAGES["rloo"].fn(rewards, mask, 4, options).tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3])
