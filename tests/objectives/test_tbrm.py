"""The TBRM objective against hand-computed values, the per-step definition and autograd."""

import pytest
import torch

from tbrm.objectives import TBRM, tbrm_loss


def test_hand_computed_example():
    # trajectory 0: 2 tokens; trajectory 1: 1 token then padding (values there must not count)
    log_probs = torch.tensor([[-0.5, -1.0], [-0.2, -9.0]])
    ref_log_probs = torch.tensor([[-0.7, -0.4], [-0.1, -3.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    initial_value = torch.tensor([2.0, 1.0])
    rewards = torch.tensor([1.0, 0.0])
    # delta_0 = 2 + (-0.5 + 0.7) + (-1.0 + 0.4) - 1 / 0.5 = 2 + 0.2 - 0.6 - 2 = -0.4
    # delta_1 = 1 + (-0.2 + 0.1) - 0 = 0.9
    loss, metrics = tbrm_loss(log_probs, ref_log_probs, initial_value, rewards, mask, beta=0.5)
    assert loss.item() == pytest.approx((0.4**2 + 0.9**2) / 2)
    assert metrics["tbrm/residual_abs_mean"].item() == pytest.approx((0.4 + 0.9) / 2)
    assert metrics["tbrm/initial_value_mean"].item() == pytest.approx(1.5)
    # implied reward beta * (V + sum log-ratio): 0.5 * 1.6 = 0.8 and 0.5 * 0.9 = 0.45
    assert metrics["tbrm/implied_reward_mean"].item() == pytest.approx((0.8 + 0.45) / 2)


def test_zero_loss_at_closed_form_optimum():
    # At the optimum, V(s_1) + sum log pi/pi_ref = r / beta for every trajectory.
    torch.manual_seed(0)
    beta = 0.05
    log_probs = -torch.rand(4, 6)
    ref_log_probs = -torch.rand(4, 6)
    mask = torch.ones(4, 6)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    initial_value = rewards / beta - (log_probs - ref_log_probs).sum(1)
    loss, _ = tbrm_loss(log_probs, ref_log_probs, initial_value, rewards, mask, beta=beta)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_equals_naive_per_trajectory_loop():
    torch.manual_seed(1)
    b, t, beta = 5, 7, 0.1
    log_probs, ref_log_probs = -torch.rand(b, t), -torch.rand(b, t)
    lengths = [7, 3, 1, 5, 6]
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    initial_value, rewards = torch.randn(b) * 5, torch.randint(0, 2, (b,)).float()
    loss, _ = tbrm_loss(log_probs, ref_log_probs, initial_value, rewards, mask, beta=beta)
    total = 0.0
    for i in range(b):
        delta = float(initial_value[i]) - float(rewards[i]) / beta
        for h in range(lengths[i]):
            delta += float(log_probs[i, h]) - float(ref_log_probs[i, h])
        total += delta**2
    assert loss.item() == pytest.approx(total / b, rel=1e-5)


def test_telescoped_residual_equals_sum_of_per_step_bellman_residuals():
    """DESIGN.md: sum_h Q(s_h,a_h) - R_beta(s_h,a_h) - V(s_{h+1}), with V after the last token 0."""
    torch.manual_seed(2)
    t, vocab, beta = 5, 11, 0.2
    logits = torch.randn(t, vocab) * 3  # raw logits at s_1..s_H
    ref_log_softmax = torch.log_softmax(torch.randn(t, vocab), -1)
    actions = torch.randint(0, vocab, (t,))
    reward = 1.0
    v = torch.logsumexp(logits, -1)
    per_step = 0.0
    for h in range(t):
        q = logits[h, actions[h]]
        r_beta = (reward / beta if h == t - 1 else 0.0) + ref_log_softmax[h, actions[h]]
        v_next = v[h + 1] if h + 1 < t else 0.0
        per_step += q - r_beta - v_next
    log_probs = (logits - v[:, None]).gather(1, actions[:, None]).T
    ref_log_probs = ref_log_softmax.gather(1, actions[:, None]).T
    loss, metrics = tbrm_loss(log_probs, ref_log_probs, v[:1], torch.tensor([reward]), torch.ones(1, t), beta=beta)
    assert metrics["tbrm/residual_mean"].item() == pytest.approx(float(per_step), rel=1e-5)
    assert loss.item() == pytest.approx(float(per_step) ** 2, rel=1e-5)


def test_padding_invariance():
    torch.manual_seed(3)
    log_probs, ref_log_probs = -torch.rand(3, 4), -torch.rand(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    args = (torch.randn(3), torch.tensor([1.0, 0.0, 1.0]))
    loss, _ = tbrm_loss(log_probs, ref_log_probs, args[0], args[1], mask, beta=0.3)
    padded = [torch.cat([x, torch.randn(3, 5) * 100], 1) for x in (log_probs, ref_log_probs)]
    mask_padded = torch.cat([mask, torch.zeros(3, 5, dtype=mask.dtype)], 1)
    loss_padded, _ = tbrm_loss(padded[0], padded[1], args[0], args[1], mask_padded, beta=0.3)
    assert loss_padded.item() == pytest.approx(loss.item(), rel=1e-6)


def test_gradients_match_the_residual():
    torch.manual_seed(4)
    b, t, beta = 4, 3, 0.5
    log_probs = (-torch.rand(b, t)).requires_grad_()
    initial_value = torch.randn(b).requires_grad_()
    ref_log_probs = -torch.rand(b, t)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    loss, _ = tbrm_loss(log_probs, ref_log_probs, initial_value, rewards, mask, beta=beta)
    loss.backward()
    delta = initial_value.detach() + ((log_probs.detach() - ref_log_probs) * mask).sum(1) - rewards / beta
    torch.testing.assert_close(initial_value.grad, 2 * delta / b)
    torch.testing.assert_close(log_probs.grad, (2 * delta / b)[:, None] * mask.float())
    assert torch.all(log_probs.grad[mask == 0] == 0)


def test_residual_is_float32_for_bf16_inputs():
    # beta = 0.002 makes r / beta = 500 logit units; bf16 has ~3 significant digits there.
    log_probs = torch.full((1, 3), -0.013, dtype=torch.bfloat16)
    ref_log_probs = torch.full((1, 3), -0.011, dtype=torch.bfloat16)
    initial_value = torch.tensor([500.5], dtype=torch.float32)
    loss, metrics = tbrm_loss(
        log_probs, ref_log_probs, initial_value, torch.tensor([1.0]), torch.ones(1, 3), beta=0.002
    )
    assert loss.dtype == torch.float32
    expected = 500.5 + 3 * (float(log_probs[0, 0]) - float(ref_log_probs[0, 0])) - 500.0
    assert metrics["tbrm/residual_mean"].item() == pytest.approx(expected, abs=1e-4)


def test_centered_initial_value_subtracts_reference_value():
    log_probs = ref_log_probs = torch.zeros(2, 2)
    mask, rewards = torch.ones(2, 2), torch.tensor([1.0, 0.0])
    v, v_ref = torch.tensor([10.0, 12.0]), torch.tensor([9.0, 12.5])
    exp = dict(
        log_probs=log_probs, ref_log_probs=ref_log_probs, initial_value=v, ref_initial_value=v_ref, rewards=rewards
    )
    raw = TBRM(beta=1.0, initial_value="raw").loss({**exp, "mask": mask})[0]
    centered = TBRM(beta=1.0, initial_value="centered").loss({**exp, "mask": mask})[0]
    assert raw.item() == pytest.approx(((10 - 1) ** 2 + 12**2) / 2)
    assert centered.item() == pytest.approx(((1 - 1) ** 2 + 0.5**2) / 2)


@pytest.mark.parametrize("beta", [0, -0.1, "x"])
def test_invalid_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        TBRM(beta=beta)


def test_invalid_initial_value_mode_is_refused():
    with pytest.raises(ValueError, match="raw"):
        TBRM(initial_value="mean")
    with pytest.raises(ValueError, match="beta"):
        tbrm_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.zeros(1), torch.ones(1, 1), beta=0.0)
