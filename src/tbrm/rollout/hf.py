"""Rollouts (``tbrm.rollout.decode``'s lean loop or Hugging Face ``generate``, KV cache on), and
the one forward pass of an update.

``generate_rollouts`` samples ``n`` completions per prompt and returns the token ids, masks and
the behaviour log-probs (log-probabilities of the sampled tokens under the distribution actually
sampled from, i.e. after temperature and top-p). ``completion_logprobs`` runs one forward pass
over prompt + completion and returns both the per-token log-probs and the initial value
V(s_1) = logsumexp of the raw logits at the last prompt position, which is all TBRM needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from tbrm.models.loading import recomputes_activations
from tbrm.rollout.decode import RolloutStats, accepts_logits_to_keep, cache_argument, decode

ENGINES = ("auto", "compact", "compiled", "hf")


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


@dataclass
class RolloutBatch:
    """A batch of sampled completions (``batch = len(prompts) * n``), all tensors on one device.

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
        stats: what ``completion_logprobs`` would return under the policy that sampled the
            batch, recorded while sampling (``tbrm.rollout.decode.RolloutStats``); None for
            ``rollout.engine=hf`` and for stored trajectories.
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
        )

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
        )


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (all 1 if no EOS)."""
    is_eos = completion_ids == eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).long()


@torch.no_grad()
def generate_rollouts(
    model,
    tokenizer,
    prompts: list[str],
    answers: list[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    greedy: bool = False,
    engine: str = "compact",
) -> RolloutBatch:
    """Sample ``n`` completions per prompt from ``model``.

    Rows are grouped by prompt: rows ``i*n .. i*n+n-1`` belong to ``prompts[i]``. ``engine``:
    ``compact`` (``tbrm.rollout.decode``: preallocated KV cache, finished rows leave the batch),
    ``compiled`` (the same loop, its Llama-family decode step compiled ahead of time),
    ``auto`` (``compiled`` where it can: a covered model on CPU and a C++ compiler; ``compact``
    otherwise) or ``hf`` (plain ``model.generate``); all sample the same distribution.
    """
    if engine not in ENGINES:
        raise ValueError(
            f"rollout.engine={engine!r} is not one of {ENGINES}; use auto (compiled where it can, compact "
            "otherwise), compact (the lean loop), compiled (the lean loop with its decode step compiled ahead of "
            "time) or hf (model.generate)."
        )
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    was_training = model.training
    model.eval()
    prompt_ids = enc["input_ids"].repeat_interleave(n, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(n, 0)
    stats, recorded = None, []
    if engine != "hf":
        completion_ids, behavior, *recorded = decode(
            model,
            prompt_ids,
            prompt_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            compiled={"compact": False, "compiled": True, "auto": None}[engine],
            group=n,
            with_stats=not greedy,
        )
    else:
        completion_ids, behavior = _hf_generate(model, enc, n, temperature, top_p, max_new_tokens, greedy, tokenizer)
    model.train(was_training)
    mask = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)
    behavior = torch.nan_to_num(behavior, neginf=0.0) * mask
    if recorded:  # sampled through decode: what the update's forward would compute
        (stats,) = recorded
        stats.log_probs, stats.entropy = stats.log_probs * mask, stats.entropy * mask
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=mask,
        behavior_log_probs=behavior,
        prompts=[p for p in prompts for _ in range(n)],
        answers=[a for a in answers for _ in range(n)],
        completions=texts,
        stats=stats,
    )


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


ENTROPY_CHUNK = 256  # positions per chunk of the detached entropy


def model_inputs(batch: RolloutBatch) -> dict[str, torch.Tensor]:
    """Prompt + completion as one left-padded sequence, with position ids that follow the
    attention mask (as ``generate`` does), so left padding changes nothing."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def shared_prompt_logits(model, batch: RolloutBatch, cost_tokens: float = 256.0) -> torch.Tensor | None:
    """The logits (batch, response_len, vocab) at the positions that predict the completion
    tokens, with each distinct prompt of the batch run once (a GRPO group's n completions share
    one): the prompts' forward fills a KV cache, each row gets its prompt's keys and values, and
    the completions' forward attends to them. Gradients flow back through the shared keys and
    values to the prompt's forward, so the result and its gradients are those of running every
    row whole, for (n - 1) / n of the prompt positions less compute.

    It pays when the positions it saves, (rows - distinct prompts) x prompt width, exceed what a
    second forward call costs (``cost_tokens`` positions; ``split_cost_tokens`` of the update's
    micro-batching, about 256 on 2 CPU cores): at the embedded default's 8-position prompts it
    does not, at 20 positions it runs the update 16% faster, at 40 positions 33%. Returns None
    (run every row whole) below that, and when the model is not a transformers model whose cache
    is the plain ``DynamicCache``, or recomputes activations (gradient checkpointing drops the
    cache).
    """
    if (len(batch) - 1) * batch.prompt_ids.shape[1] <= cost_tokens:  # could not pay even if all rows shared one
        return None
    key = torch.cat((batch.prompt_ids, batch.prompt_mask.to(batch.prompt_ids.dtype)), 1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    saved = (len(key) - len(unique)) * batch.prompt_ids.shape[1]
    if saved <= cost_tokens or not isinstance(model, PreTrainedModel) or recomputes_activations(model):
        return None
    width, response_len = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    ids, prompt_mask = unique[:, :width], unique[:, width:]
    cache, cache_arg = DynamicCache(config=model.config), cache_argument(model)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):  # sliding windows and the like
        return None
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    first = model(
        input_ids=ids,
        attention_mask=prompt_mask,
        position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
        **{cache_arg: cache},
        use_cache=True,
        **keep,
    ).logits[:, -1:]
    if response_len == 1:  # the last prompt position predicts the only completion token
        return first[inverse]
    for layer in cache.layers:  # each row's prompt (index: gradients add up over the group)
        layer.keys, layer.values = layer.keys[inverse], layer.values[inverse]
    mask = torch.cat((batch.prompt_mask, batch.completion_mask), 1)[:, :-1]  # the last token predicts nothing
    rest = model(
        input_ids=batch.completion_ids[:, :-1],
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0)[:, width:],
        **{cache_arg: cache},
        use_cache=True,
    ).logits
    return torch.cat((first[inverse], rest), 1)


def completion_logprobs(
    model,
    batch: RolloutBatch,
    *,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    temperature: float = 1.0,
    share_cost_tokens: float = 256.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward pass over prompt + completion.

    Returns ``(log_probs, initial_value, entropy)``: log pi(a_h | s_h) of the completion tokens
    (batch, response_len); V(s_1) = logsumexp of the raw logits at the last prompt position
    (batch,); and, when asked, the per-token entropy (batch, response_len), detached unless
    ``entropy_grad``. ``temperature`` divides the logits before the log-probs and the entropy
    (the sampling distribution, for ratio-based objectives); V(s_1) always uses the raw logits.
    Log-probs are a gather minus a logsumexp, so no full-vocabulary log-softmax is kept for backward,
    and the LM head skips the prompt's positions (``logits_to_keep``) when the model allows it.
    Rows that share a prompt run it once when that saves more than ``share_cost_tokens``
    positions (``shared_prompt_logits``): the same values and gradients, less compute.
    """
    prompt_len, response_len = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    raw = shared_prompt_logits(model, batch, share_cost_tokens)
    if raw is not None:
        raw = raw.float()
    elif accepts_logits_to_keep(model):  # the LM head runs on the positions that predict a token only
        out = model(**model_inputs(batch), use_cache=False, logits_to_keep=response_len + 1)
        raw = out.logits[:, :response_len].float()
    else:
        raw = model(**model_inputs(batch), use_cache=False).logits[:, prompt_len - 1 : prompt_len - 1 + response_len]
        raw = raw.float()
    initial_value = torch.logsumexp(raw[:, 0], -1)
    logits = raw / temperature if temperature != 1.0 else raw
    lse = torch.logsumexp(logits, -1)
    log_probs = logits.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy and entropy_grad and torch.is_grad_enabled():
        entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)
    elif with_entropy:  # a logged figure: chunks of positions, so no (batch, len, vocab) copies pile up
        with torch.no_grad():
            entropy = torch.cat(
                [
                    lse[:, i : i + ENTROPY_CHUNK] - (torch.softmax(chunk, -1) * chunk).sum(-1)
                    for i, chunk in (
                        (i, logits[:, i : i + ENTROPY_CHUNK]) for i in range(0, response_len, ENTROPY_CHUNK)
                    )
                ],
                dim=1,
            )
    return log_probs * batch.completion_mask, initial_value, entropy


def completion_values(critic, batch: RolloutBatch) -> torch.Tensor:
    """The critic's V(s_h) for each completion token's state s_h (the position that predicts
    a_h), (batch, response_len), 0 on padding."""
    prompt_len, response_len = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    values = critic(**model_inputs(batch))[:, prompt_len - 1 : prompt_len - 1 + response_len]
    return values * batch.completion_mask
