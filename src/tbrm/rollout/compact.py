"""``rollout.engine=compact``: our decode loop (``tbrm.rollout.decode``) on the policy's own
weights: a KV cache preallocated for the whole completion, finished rows leave the batch, the
prefill once per prompt of a group, and for Llama-family models the decode step as one pure
tensor function (``tbrm.rollout.lean_math``). It samples the distribution ``generate`` samples,
and records what the update's forward pass would compute (``RolloutStats``), so an update that
runs once per rollout can skip the forward pass of rows that need no gradient."""

from __future__ import annotations

from tbrm.rollout.decode import decode
from tbrm.rollout.engine import RolloutEngine


class CompactEngine(RolloutEngine):
    #: the decode step: False eager, True compiled ahead of time, None compiled where it can
    compiled: bool | None = False

    def sample(self, enc, prompt_ids, prompt_mask, n, temperature, top_p, max_new_tokens, greedy):
        tokenizer = self.tokenizer
        completion_ids, behavior, *stats = decode(
            self.model,
            prompt_ids,
            prompt_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            compiled=self.compiled,
            group=n,
            with_stats=not greedy,
        )
        return completion_ids, behavior, stats[0] if stats else None
