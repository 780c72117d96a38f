import math

import pytest
import torch

from tbrm.objectives.common import (
    aggregate_loss,
    aggregation_weight,
    kl_estimate,
    masked_mean,
    masked_sum,
    sequence_kl,
)


def test_masked_sum_and_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(values, mask).tolist() == [3.0, 4.0]
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 4.0]
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 4) / 3)


def test_masked_mean_of_empty_mask_is_zero():
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2)).item() == 0.0


def test_sequence_kl_is_sum_of_masked_log_ratios():
    log_probs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0], [-0.5, -9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert sequence_kl(log_probs, ref, mask).tolist() == [0.5 - 1.0, 0.0]


def test_kl_estimators_are_unbiased_or_low_variance_as_documented():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])  # the reference
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True)
    log_p, log_q = p.log()[samples], q.log()[samples]
    k1, k2, k3 = (kl_estimate(log_p, log_q, k) for k in ("k1", "k2", "k3"))
    assert k1.mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert k3.mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert (k3 >= 0).all() and (k2 >= 0).all()
    assert k3.var() < k1.var()
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(log_p, log_q, "k4")


def test_micro_batch_weights_rebuild_the_whole_batch_loss():
    torch.manual_seed(0)
    loss_mat = torch.randn(6, 5)
    mask = torch.ones(6, 5)
    for i, n in enumerate([5, 1, 3, 2, 4, 5]):
        mask[i, n:] = 0
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean"):
        agg = mode if mode != "seq-mean" else "seq-mean-token-mean"
        whole = aggregate_loss(loss_mat, mask, agg, norm_length=5)
        parts = sum(
            aggregation_weight(mode, m, float(mask.sum()), mask.shape[0]) * aggregate_loss(x, m, agg, 5)
            for x, m in ((loss_mat[:4], mask[:4]), (loss_mat[4:], mask[4:]))
        )
        assert parts.item() == pytest.approx(whole.item(), rel=1e-5), mode
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate_loss(loss_mat, mask, "sum")


def test_truncated_is_weights_per_token_and_per_sequence():
    from tbrm.objectives.common import truncated_is_weights

    trainer = torch.tensor([[-1.0, -1.0, -2.0], [-0.5, -0.5, 0.0]])
    rollout = torch.tensor([[-1.5, -1.0, -0.5], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token = truncated_is_weights(trainer, rollout, mask, "token", threshold=1.5)
    expected = torch.tensor([[min(math.exp(0.5), 1.5), 1.0, math.exp(-1.5)], [1.0, 1.5, 0.0]])
    torch.testing.assert_close(token, expected)
    seq = truncated_is_weights(trainer, rollout, mask, "sequence", threshold=5.0)
    torch.testing.assert_close(seq, torch.tensor([[math.exp(-1.0)] * 3, [math.exp(1.0)] * 2 + [0.0]]))
    assert truncated_is_weights(trainer, rollout, mask, "sequence", threshold=2.0)[1, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="null, token or sequence"):
        truncated_is_weights(trainer, rollout, mask, "batch")
