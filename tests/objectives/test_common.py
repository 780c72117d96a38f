import pytest
import torch

from tbrm.objectives.common import masked_mean, masked_sum, sequence_kl


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
