"""``RolloutBatch``: the sampled completions every engine returns and every update consumes.

An engine fills one with the prompt and completion token ids, their masks, the behaviour
log-probs (of the sampled tokens under the distribution actually sampled from: after temperature
and top-p) and, when it can, ``RolloutStats`` (what the update's forward pass would compute under
the policy that sampled them). Stored trajectories become one too
(``tbrm.data.trajectories.to_rollout_batch``), so the update never asks where a batch came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RolloutStats:
    """What ``tbrm.models.forward.completion_logprobs`` would return for a rollout's tokens under
    the policy that drew them, computed from the logits the rollout already has (no extra
    forward): ``log_probs`` and ``entropy`` (rows, steps) of the tempered distribution before top-p
    (0 after EOS), ``initial_value`` (rows,) the logsumexp of the raw logits after the prompt, at
    ``temperature``. Equal to the forward pass's up to float rounding while the policy has not
    changed since the rollout."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    initial_value: torch.Tensor
    temperature: float

    def to(self, device) -> RolloutStats:
        move = (t.to(device) for t in (self.log_probs, self.entropy, self.initial_value))
        return RolloutStats(*move, self.temperature)

    def select(self, rows: torch.Tensor, steps: int) -> RolloutStats:
        """Rows ``rows`` (an index tensor), the first ``steps`` steps."""
        pick = (self.log_probs[rows, :steps], self.entropy[rows, :steps], self.initial_value[rows])
        return RolloutStats(*pick, self.temperature)


@dataclass
class RolloutBatch:
    """A batch of sampled completions (``batch = len(prompts) * n``), all tensors on one device.

    Rows are grouped by prompt: rows ``i*n .. i*n+n-1`` belong to the i-th prompt.

    Attributes:
        prompt_ids: left-padded prompt tokens, (batch, prompt_len).
        prompt_mask: 1 on real prompt tokens, (batch, prompt_len).
        completion_ids: right-padded completion tokens, EOS included when generated,
            (batch, response_len).
        completion_mask: 1 on completion tokens up to and including the first EOS,
            (batch, response_len).
        behavior_log_probs: log-probs of the sampled tokens under the sampling distribution,
            (batch, response_len), 0 on padding.
        prompts, answers, completions: the texts, one entry per row.
        stats: ``RolloutStats`` recorded while sampling; None for ``rollout.engine=hf`` and
            ``vllm``, and for stored trajectories.
        finished: (batch,) bool, True where the completion ended with its EOS (False: truncated
            at ``max_new_tokens``); None where unknown.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    behavior_log_probs: torch.Tensor
    prompts: list[str]
    answers: list[str]
    completions: list[str] = field(default_factory=list)
    stats: RolloutStats | None = None
    finished: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def to(self, device) -> RolloutBatch:
        """The batch with every tensor on ``device``."""
        tensors = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "behavior_log_probs")
        return RolloutBatch(
            **{name: getattr(self, name).to(device) for name in tensors},
            prompts=self.prompts,
            answers=self.answers,
            completions=self.completions,
            stats=None if self.stats is None else self.stats.to(device),
            finished=None if self.finished is None else self.finished.to(device),
        )

    def lengths(self, rows: list[int] | None = None) -> list[int]:
        """Each row's real length, prompt + completion, padding excluded (all rows, or ``rows``)."""
        rows = list(range(len(self))) if rows is None else rows
        return (self.prompt_mask[rows].sum(1) + self.completion_mask[rows].sum(1)).tolist()

    def select(self, index: slice | list[int] | torch.Tensor) -> RolloutBatch:
        """Rows ``index`` of the batch (a micro-batch), padding columns trimmed."""
        if isinstance(index, slice):
            index = list(range(len(self)))[index]
        rows = [int(i) for i in index]
        idx = torch.tensor(rows, dtype=torch.long, device=self.completion_ids.device)
        mask = self.completion_mask[idx]
        keep = max(int(mask.sum(1).max().item()) if rows else 0, 1)
        pmask = self.prompt_mask[idx]
        drop = pmask.shape[1] - int(pmask.sum(1).max().item()) if rows else 0
        return RolloutBatch(
            prompt_ids=self.prompt_ids[idx, drop:],
            prompt_mask=pmask[:, drop:],
            completion_ids=self.completion_ids[idx, :keep],
            completion_mask=mask[:, :keep],
            behavior_log_probs=self.behavior_log_probs[idx, :keep],
            prompts=[self.prompts[i] for i in rows],
            answers=[self.answers[i] for i in rows],
            completions=[self.completions[i] for i in rows] if self.completions else [],
            stats=None if self.stats is None else self.stats.select(idx, keep),
            finished=None if self.finished is None else self.finished[idx],
        )


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (all 1 if no EOS)."""
    is_eos = completion_ids == eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).long()


def finish_batch(tokenizer, prompts, answers, n, prompt_ids, prompt_mask, completion_ids, behavior, stats=None):
    """The ``RolloutBatch`` of an engine's raw output: everything after each row's first EOS
    masked (padding ids, log-prob 0), non-finite behaviour log-probs of padding zeroed, the
    completions decoded, a row finished where it has an EOS; ``prompts`` and ``answers`` repeated
    ``n`` times in row order."""
    mask = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)
    finished = (completion_ids == tokenizer.eos_token_id).any(1)
    behavior = torch.nan_to_num(behavior, neginf=0.0) * mask
    if stats is not None:
        stats.log_probs, stats.entropy = stats.log_probs * mask, stats.entropy * mask
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=mask,
        behavior_log_probs=behavior,
        prompts=[p for p in prompts for _ in range(n)],
        answers=[a for a in answers for _ in range(n)],
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        stats=stats,
        finished=finished,
    )
