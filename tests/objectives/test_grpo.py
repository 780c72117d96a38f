"""GRPO: the clipped loss against hand-computed values, aggregation, config checks."""

import math

import pytest
import torch

from tbrm.objectives import GRPO, grpo_loss


def test_ratio_one_no_clipping_gives_minus_mean_advantage_plus_kl():
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.1, 0.9, 0.3]]))
    ref = torch.log(torch.tensor([[0.4, 0.25, 0.8], [0.2, 0.9, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0, -1.0])
    beta = 0.1
    loss, metrics = grpo_loss(log_probs, log_probs, adv, mask, beta=beta, ref_log_probs=ref)
    # token-mean: 5 tokens, advantages 2, 2, -1, -1, -1
    pg = -(2 + 2 - 1 - 1 - 1) / 5
    k3 = [0.4 / 0.5 - 1 - math.log(0.4 / 0.5), 0.0, 0.2 / 0.1 - 1 - math.log(0.2 / 0.1), 0.0, 0.0]
    assert loss.item() == pytest.approx(pg + beta * sum(k3) / 5, rel=1e-5)
    assert metrics["grpo/pg_loss"].item() == pytest.approx(pg)
    assert metrics["grpo/clip_frac"].item() == 0.0 and metrics["grpo/ratio_mean"].item() == pytest.approx(1.0)


def test_clipping_by_hand_and_its_gradient():
    old = torch.zeros(1, 2)
    log_probs = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)  # ratios 1.5, 0.5
    mask = torch.ones(1, 2)
    loss, metrics = grpo_loss(log_probs, old, torch.tensor([1.0]), mask, epsilon=0.2, epsilon_high=0.28)
    # A > 0: token 1 clipped at 1.28 (no gradient), token 2 unclipped (ratio 0.5 < 0.8 is not clipped for A > 0)
    assert loss.item() == pytest.approx(-(1.28 + 0.5) / 2)
    assert metrics["grpo/clip_frac"].item() == pytest.approx(0.5)
    loss.backward()
    assert log_probs.grad[0, 0] == 0.0 and log_probs.grad[0, 1] == pytest.approx(-0.5 / 2)
    loss_neg, _ = grpo_loss(log_probs.detach(), old, torch.tensor([-1.0]), mask, epsilon=0.2)
    assert loss_neg.item() == pytest.approx((1.5 + 0.8) / 2)  # A < 0: the low side clips at 0.8


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", (1 + 2 + 3 + 4 + 5) / 5),
        ("seq-mean-token-mean", ((1 + 2) / 2 + (3 + 4 + 5) / 3) / 2),
        ("seq-mean-token-sum-norm", ((1 + 2) / 10 + (3 + 4 + 5) / 10) / 2),
    ],
)
def test_loss_aggregation_modes(mode, expected):
    adv = -torch.tensor([1.0, 1.0])  # ratio 1 everywhere, so every token's loss is -A = 1
    log_probs = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    per_token = torch.tensor([[1.0, 2.0, 9.0, 9.0], [3.0, 4.0, 5.0, 9.0]])
    from tbrm.objectives.common import aggregate_loss

    assert aggregate_loss(per_token, mask, mode, norm_length=10).item() == pytest.approx(expected)
    loss, _ = grpo_loss(log_probs, log_probs, adv, mask, loss_agg_mode=mode, norm_length=10)
    # every token's loss is 1: both means give 1, the Dr. GRPO form (2/10 + 3/10) / 2
    assert loss.item() == pytest.approx(0.25 if mode == "seq-mean-token-sum-norm" else 1.0)


def test_beta_zero_needs_no_reference_and_grpo_rejects_bad_settings():
    assert not GRPO(group_size=4, beta=0.0).needs_reference
    assert GRPO(group_size=4, beta=0.01).needs_reference
    with pytest.raises(ValueError, match="at least 2 completions per prompt"):
        GRPO(group_size=1)
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        GRPO(loss_agg_mode="sum")
    with pytest.raises(ValueError, match="epsilon must be a number > 0"):
        GRPO(epsilon=0)
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        GRPO(beta=-0.1)
    with pytest.raises(ValueError, match="scale_rewards"):
        GRPO(scale_rewards="max")
    with pytest.raises(ValueError, match="norm_length"):
        GRPO(loss_agg_mode="seq-mean-token-sum-norm", norm_length=None)
    with pytest.raises(ValueError, match="algorithm.epochs"):
        GRPO(epochs=0)


def test_prepare_then_loss_through_the_objective():
    objective = GRPO(group_size=2, beta=0.0)
    exp = {"rewards": torch.tensor([1.0, 0.0, 1.0, 1.0]), "mask": torch.ones(4, 3)}
    metrics = objective.prepare(exp)
    assert metrics["grpo/frac_zero_std"].item() == 0.5
    exp["log_probs"] = exp["behavior_log_probs"] = torch.zeros(4, 3)
    loss, _ = objective.loss(exp)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # advantages sum to zero within each group


def test_dual_clip_caps_the_loss_of_negative_advantages_by_hand():
    old = torch.zeros(1, 3)
    log_probs = torch.log(torch.tensor([[5.0, 2.0, 0.5]])).requires_grad_()  # ratios 5, 2, 0.5
    mask = torch.ones(1, 3)
    plain, _ = grpo_loss(log_probs, old, torch.tensor([-1.0]), mask, epsilon=0.2)
    assert plain.item() == pytest.approx((5.0 + 2.0 + 0.8) / 3)  # A < 0: -A * max(ratio, 0.8)
    loss, metrics = grpo_loss(log_probs, old, torch.tensor([-1.0]), mask, epsilon=0.2, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 + 0.8) / 3)  # the ratio-5 token is capped at c = 3
    assert metrics["grpo/clip_frac_lower"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert log_probs.grad[0, 0] == 0.0 and log_probs.grad[0, 1] == pytest.approx(2.0 / 3)
    positive, _ = grpo_loss(log_probs.detach(), old, torch.tensor([1.0]), mask, epsilon=0.2, clip_ratio_c=3.0)
    assert positive.item() == pytest.approx(-(1.2 + 1.2 + 0.5) / 3)  # A > 0: the dual clip does nothing
    with pytest.raises(ValueError, match="clip_ratio_c must be a number > 1"):
        GRPO(clip_ratio_c=1.0)


def test_rloo_and_reinforce_pp_are_the_same_loss_with_their_own_estimator_and_prefix():
    rewards, mask = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.ones(4, 2)
    rloo = GRPO(group_size=4, advantage="rloo", name="rloo")
    exp = {"rewards": rewards, "mask": mask}
    metrics = rloo.prepare(exp)
    assert exp["advantages"].tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    assert set(metrics) == {"rloo/advantage_abs_mean", "rloo/frac_zero_std"}
    exp["log_probs"] = exp["behavior_log_probs"] = torch.zeros(4, 2)
    loss, metrics = rloo.loss(exp)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and "rloo/clip_frac" in metrics
    single = GRPO(group_size=1, advantage="reinforce_pp", name="reinforce_pp")  # one rollout per prompt
    exp = {"rewards": torch.tensor([1.0, 0.0, 0.0, 1.0]), "mask": mask}
    assert set(single.prepare(exp)) == {"reinforce_pp/advantage_abs_mean"}
    a = 0.5 / math.sqrt(8 * 0.25 / 7)  # rewards minus 0.5 over the std (unbiased) of 8 tokens
    assert exp["advantages"].tolist() == pytest.approx([a, -a, -a, a], abs=1e-4)
    with pytest.raises(ValueError, match="RLOO needs at least 2 completions per prompt"):
        GRPO(group_size=1, advantage="rloo", name="rloo")
    with pytest.raises(ValueError, match="advantage must be one of"):
        GRPO(advantage="vtrace")


def test_truncated_is_weights_scale_each_tokens_surrogate():
    log_probs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.ones(1, 3)
    weights = torch.tensor([[2.0, 0.5, 1.0]])
    plain, _ = grpo_loss(log_probs, log_probs.detach(), torch.tensor([1.0]), mask)
    weighted, metrics = grpo_loss(log_probs, log_probs.detach(), torch.tensor([1.0]), mask, is_weights=weights)
    assert float(plain.detach()) == pytest.approx(-1.0) and float(weighted.detach()) == pytest.approx(-3.5 / 3)
    assert float(metrics["grpo/pg_loss"]) == pytest.approx(-3.5 / 3)
    (grad,) = torch.autograd.grad(weighted, log_probs)
    torch.testing.assert_close(grad, -weights / 3)  # d/dlogp of -w * ratio at ratio 1
