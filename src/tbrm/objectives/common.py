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


KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def kl_estimate(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the log-probs of tokens sampled from pi.

    With log r = log pi_ref(a|s) - log pi(a|s) (Schulman, "Approximating KL divergence", 2020):
    ``k1`` = -log r (unbiased, can be negative), ``k2`` = (log r)^2 / 2 (biased, low variance),
    ``k3`` = r - 1 - log r (unbiased, always >= 0; the estimator of GRPO, DeepSeekMath Eq. 4).
    Shapes: (batch, response_len) -> (batch, response_len), computed in float32.
    """
    log_r = ref_log_probs.float() - log_probs.float()
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r.pow(2)
    if kind == "k3":
        log_r = log_r.clamp(-20.0, 20.0)  # exp() of a wild ratio would overflow float32
        return torch.exp(log_r) - 1.0 - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_ESTIMATORS}.")


def aggregate_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", norm_length: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss (batch, response_len) to a scalar, the ways GRPO variants do.

    ``token-mean``: the mean over every completion token of the batch (DAPO, TRL's default);
    ``seq-mean-token-mean``: the mean over sequences of each sequence's token mean (the original
    GRPO, DeepSeekMath Eq. 3); ``seq-mean-token-sum-norm``: the mean over sequences of each
    sequence's token sum divided by the constant ``norm_length`` (Dr. GRPO, arXiv 2503.20783), so
    long and short completions get the same per-token weight.
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_mat, mask, dim=-1).mean()
    if mode == "seq-mean-token-sum-norm":
        if not norm_length or norm_length <= 0:
            raise ValueError("loss_agg_mode 'seq-mean-token-sum-norm' needs norm_length > 0 (the max response length).")
        return (loss_mat * mask).sum(-1).mean() / norm_length
    raise ValueError(f"unknown loss_agg_mode {mode!r}; choose one of {LOSS_AGG_MODES}.")


def aggregation_weight(mode: str, part_mask: torch.Tensor, whole_tokens: float, whole_rows: float) -> float:
    """The weight of one micro-batch's aggregated loss in its (mini-)batch's loss.

    Summing ``weight * aggregate_loss(part)`` over the micro-batches of a batch gives
    ``aggregate_loss(batch)`` exactly: token counts for ``token-mean``, row counts otherwise.
    ``whole_tokens``, ``whole_rows``: the batch's completion tokens and rows (under data
    parallelism their mean over the ranks, so that averaging the ranks' gradients gives the loss
    of the whole data-parallel batch).
    """
    if mode == "token-mean":
        return float(part_mask.sum()) / max(whole_tokens, 1.0)
    return part_mask.shape[0] / max(whole_rows, 1.0)


def clipped_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy-gradient loss per token (Schulman et al. 2017, Eq. 7), negated.

    ``-min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)`` with
    ``ratio = exp(log_probs - old_log_probs)``; ``advantages`` broadcast against the tokens. With
    ``clip_ratio_c`` (dual-clip PPO, Ye et al. 2020, arXiv 1912.09729, Eq. 5, as verl), the loss of
    a token with a negative advantage is at most ``-clip_ratio_c * A``, so one huge ratio cannot
    dominate the batch. Returns ``(loss_mat, ratio, clipped, clipped_lower)``: ``clipped`` is 1
    where the clipped term was chosen, ``clipped_lower`` where the dual clip bound (0 without it).
    """
    log_ratio = (log_probs.float() - old_log_probs.float()).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    loss_mat = -torch.minimum(unclipped, clipped)
    lower = torch.zeros_like(loss_mat)
    if clip_ratio_c is not None:
        cap = -clip_ratio_c * advantages * torch.ones_like(loss_mat)
        negative = (advantages < 0) & (loss_mat > cap)
        lower = negative.float()
        loss_mat = torch.where(negative, cap, loss_mat)
    return loss_mat, ratio.detach(), (clipped < unclipped).float(), lower


def truncated_is_weights(
    trainer_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    mask: torch.Tensor,
    level: str = "token",
    threshold: float = 2.0,
) -> torch.Tensor:
    """Truncated importance weights of the rollout/trainer mismatch (Ionides 2008, truncated IS;
    as TRL's ``vllm_importance_sampling_correction`` and verl's ``rollout_is``), detached, 0 on padding.

    The rollout engine samples from pi_rollout, which differs from the trainer's pi_old of the same
    weights by kernels and precision; the policy gradient wants samples of pi_old, so each term is
    reweighted by ``w = min(pi_old / pi_rollout, C)``:

        token:    w_{i,t} = min(exp(log pi_old(y_t) - log pi_rollout(y_t)), C)
        sequence: w_i = min(exp(sum_t [log pi_old(y_t) - log pi_rollout(y_t)]), C), for every token of i

    ``trainer_log_probs``, ``rollout_log_probs``, ``mask``: (batch, response_len); ``threshold``: C.
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"rollout.is_correction must be null, token or sequence (got {level!r}).")
    cap = torch.log(torch.tensor(float(threshold)))
    log_ratio = (trainer_log_probs.detach().float() - rollout_log_probs.float()) * mask
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
    return torch.exp(torch.minimum(log_ratio, cap)) * mask
