"""Small tensor helpers shared by every objective (masked reductions, KL estimates)."""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1, along ``dim``. Shapes: both (batch, response_len)."""
    return (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (all of them when ``dim`` is None).

    An all-zero mask gives 0, not NaN, so empty completions do not poison a batch.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def sequence_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL estimate to the reference, sum_h log pi(a_h|s_h) - log pi_ref(a_h|s_h).

    This is the k1 (log-ratio) estimator summed over the tokens of each completion; it is unbiased
    for KL(pi || pi_ref) on sequences sampled from pi. Shapes: (batch, response_len) -> (batch,).
    """
    return masked_sum(log_probs.float() - ref_log_probs.float(), mask.float())
