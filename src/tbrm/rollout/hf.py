"""``rollout.engine=hf``: plain Hugging Face ``model.generate`` (KV cache on), with the
behaviour log-probs recorded by a last logits processor. Slower than the compact loop on small
models (its cache grows by concatenation and finished rows stay in the batch:
``benchmarks/README.md``), and the reference any other engine is checked against."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from tbrm.rollout.engine import RolloutEngine


class BehaviorLogProbs(LogitsProcessor):
    """The log-probability of each sampled token under the distribution it was drawn from.

    Placed last among the logits processors, it sees the scores exactly as sampled (after
    temperature and top-p); at each step it reads the token the previous step drew from the
    growing ``input_ids``. It keeps one step of scores, (batch, vocab), not one per step: with a
    151,936-token vocabulary, 128 completions and 2,048 steps, every step's scores would take
    160 GB.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def _record(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._record(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), -1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(batch, steps) log-probs, given the tokens the last step drew."""
        self._record(last_tokens)
        self.previous = None
        return torch.stack(self.steps, dim=1)


class HFEngine(RolloutEngine):
    def sample(self, enc, prompt_ids, prompt_mask, n, temperature, top_p, max_new_tokens, greedy):
        completion_ids, behavior = _hf_generate(
            self.model, enc, n, temperature, top_p, max_new_tokens, greedy, self.tokenizer
        )
        return completion_ids, behavior, None  # generate records no RolloutStats


def _hf_generate(model, enc, n, temperature, top_p, max_new_tokens, greedy, tokenizer):
    """``model.generate`` with the behaviour log-probs recorded by a last logits processor."""
    # Temperature and top-p run here, before the recorder, so that it sees the sampled
    # distribution; generate itself adds no warper (temperature 1, top-p 1, top-k 0).
    recorder = BehaviorLogProbs()
    processors = LogitsProcessorList()
    if not greedy and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if not greedy and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(recorder)
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        do_sample=not greedy,
        temperature=1.0 if not greedy else None,
        top_p=1.0 if not greedy else None,
        top_k=0 if not greedy else None,
        logits_processor=processors,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        return_dict_in_generate=True,
    )
    completion_ids = out.sequences[:, enc["input_ids"].shape[1] :]
    return completion_ids, recorder.finish(completion_ids[:, -1])
