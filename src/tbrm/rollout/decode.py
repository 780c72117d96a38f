"""A lean sampling loop over the model's own forward: the loop of ``rollout.engine=compact``,
``compiled`` and ``auto`` (``tbrm.rollout.compact``, ``tbrm.rollout.compiled``).

Plain HF ``generate`` spends most of a small model's rollout on two kinds of waste, both
measured in ``benchmarks/README.md``:

- its default KV cache grows by ``torch.cat`` at every step, copying every layer's keys and
  values once per new token (quadratic in the completion length);
- a row that has emitted EOS stays in the batch, so every later step still runs the full model
  on it, until the longest completion of the batch ends.

``decode`` keeps the KV cache in buffers allocated once for the whole completion
(``PreallocatedLayer``: a step writes one position in place) and drops finished rows from the
batch, the cache and the attention mask (``compact_fraction``). It calls the model's own
``forward`` with its KV cache, ``attention_mask`` and ``position_ids``, as ``generate``
does, so it works for any Hugging Face causal LM, and it samples exactly as ``generate`` does
(temperature, then top-p, then one ``torch.multinomial`` over the batch): without compaction it
draws the same tokens as ``generate`` from the same seed. The behaviour log-probs are those of
the sampled tokens under the distribution sampled from: a gather minus a logsumexp, with no
full-vocabulary log-softmax kept.

For Llama-family models the decode steps (not the prefill) run ``tbrm.rollout.lean_step``
(``tbrm.rollout.lean_math.step``): one pure tensor function over the model's parameters and the
cache held as two tensors, run eagerly (``rollout.engine=compact``) or compiled ahead of time,
once per machine, by AOTInductor (``rollout.engine=compiled``, ``tbrm.rollout.aot``).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tbrm.models.forward import accepts_logits_to_keep, cache_argument
from tbrm.rollout.batch import RolloutStats
from tbrm.rollout.cache import PreallocatedLayer
from tbrm.rollout.lean_step import LeanStep


def preallocated_cache(model, capacity: int) -> DynamicCache:
    """The model's default cache with each full-attention layer preallocated to ``capacity``
    positions (sliding-window and other special layers are kept as the model defines them)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def stacked_cache(cache: DynamicCache, name: str, group: int = 1) -> torch.Tensor:
    """The ``name`` buffers (``key_buffer`` or ``value_buffer``) of a prefilled cache of
    ``PreallocatedLayer``s as one tensor (layers, rows * group, kv_heads, capacity, head_dim), each
    row's filled positions copied to ``group`` rows in a row (only those positions are copied)."""
    first = cache.layers[0]
    prompts, kv_heads, capacity, dim = getattr(first, name).shape
    out = getattr(first, name).new_empty(len(cache.layers), prompts * group, kv_heads, capacity, dim)
    for i, layer in enumerate(cache.layers):
        grouped = out[i].view(prompts, group, kv_heads, capacity, dim)
        grouped[:, :, :, : layer.length] = getattr(layer, name)[:, None, :, : layer.length]
    return out


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    with_stats: bool = False,
) -> tuple[torch.Tensor, ...]:
    """One token per row from next-token ``logits`` (rows, vocab), and its log-probability under
    the distribution it was drawn from (after temperature and top-p; the raw softmax when greedy).

    The same operations in the same order as ``generate``'s ``TemperatureLogitsWarper``,
    ``TopPLogitsWarper`` and multinomial draw, so the random stream is consumed identically.
    With ``with_stats``, also the token's log-probability and the entropy under the tempered
    distribution before top-p, ``log softmax(z / T)`` and ``H(softmax(z / T))`` (``T``: 1 when
    greedy): what an update's forward pass computes for that token (``tbrm.models.forward.completion_logprobs``).
    """
    scores = logits.float()
    if not greedy and temperature != 1.0:
        scores = scores / temperature
    probs = scores.softmax(-1) if with_stats or (not greedy and top_p >= 1.0) else None
    if greedy:
        tokens = scores.argmax(-1)
    else:
        sampled = scores
        if top_p < 1.0:
            ascending, order = torch.sort(scores, descending=False)
            cumulative = ascending.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - top_p
            remove[..., -1:] = False  # keep at least the most likely token
            sampled = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
        tokens = torch.multinomial(probs if top_p >= 1.0 else sampled.softmax(-1), num_samples=1).squeeze(1)
    # top-p only sets the scores of tokens it removes, never of a drawn one: one gather serves both
    picked = scores.gather(1, tokens[:, None]).squeeze(1)
    lse = torch.logsumexp(scores, -1)
    log_probs = picked - (lse if greedy or top_p >= 1.0 else torch.logsumexp(sampled, -1))
    if not with_stats:
        return tokens, log_probs
    return tokens, log_probs, picked - lse, lse - (probs * scores).sum(-1)


@torch.no_grad()
def decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    compact_fraction: float | None = 0.25,
    lean: bool = True,
    compiled: bool | None = False,
    group: int = 1,
    with_stats: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Sample up to ``max_new_tokens`` tokens after left-padded prompts; stop at EOS.

    Returns ``(completion_ids, behavior_log_probs)``, both (rows, steps) where ``steps`` is the
    length of the longest completion; a row is ``pad_token_id`` (log-prob 0) after its EOS.
    With ``with_stats``, also ``RolloutStats`` (what an update's forward pass would compute for
    these tokens under the policy that drew them). ``group``: rows come in runs of ``group``
    copies of one prompt (GRPO's groups), whose prefill runs once per prompt.
    Finished rows leave the batch once they are at least ``compact_fraction`` of the rows still
    decoded (None: never, so the batch and the random stream are exactly ``generate``'s). With
    ``lean``, the decode steps of a Llama-family model run ``tbrm.rollout.lean_step.LeanStep``
    (other models, and the prefill, run the model's ``forward``); ``compiled`` runs it under
    AOTInductor (``tbrm.rollout.aot.compiled_step``) and requires a covered model; None
    (``rollout.engine=auto``) compiles it where it can (a covered model on CPU, a C++ compiler)
    and runs the lean or the model's step otherwise.
    """
    rows, prompt_len = input_ids.shape
    device = input_ids.device
    if group < 1 or rows % group:
        raise ValueError(f"decode: {rows} rows do not come in groups of {group}.")
    cache = preallocated_cache(model, prompt_len + max_new_tokens)
    step_fn = LeanStep.for_model(model, cache, compiled=compiled) if lean or compiled is not False else None
    if compiled and step_fn is None:
        raise ValueError(
            f"rollout.engine=compiled compiles the decode step of Llama, Mistral, Qwen2 and Qwen3 models "
            f"(default rotary embedding, plain nn.Linear projections, no sliding window); this "
            f"{model.config.model_type} model is not covered: use rollout.engine=compact."
        )
    mask = torch.ones(rows, prompt_len + max_new_tokens, dtype=attention_mask.dtype, device=device)
    mask[:, :prompt_len] = attention_mask
    position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache_arg = cache_argument(model)
    logits = model(  # the prefill: once per prompt of a group, then copied to each member
        input_ids=input_ids[::group],
        attention_mask=attention_mask[::group],
        position_ids=position_ids[::group],
        **{cache_arg: cache},
        use_cache=True,
        **extra,
    ).logits[:, -1]
    if group > 1:
        logits = logits.repeat_interleave(group, 0)
    initial_value = torch.logsumexp(logits.float(), -1) if with_stats else None
    position = position_ids[:, -1:]
    if step_fn is None:
        if group > 1:
            cache.batch_repeat_interleave(group)
    else:  # the lean step reads the cache as two tensors (layers, rows, ...)
        keys, values = (stacked_cache(cache, name, group) for name in ("key_buffer", "value_buffer"))
        bias = torch.zeros(mask.shape, dtype=keys.dtype, device=device).masked_fill(mask == 0, -float("inf"))
        del cache
    # compiled: never fewer than 2 rows (the package is exported for 2 or more: export specialises 1)
    min_rows = 2 if step_fn is not None and step_fn.compiled else 1
    tokens_out = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    outputs = [torch.zeros(rows, max_new_tokens, device=device)]  # the behaviour log-probs
    if with_stats:  # the policy's log-probs (before top-p) and entropies
        outputs += [torch.zeros(rows, max_new_tokens, device=device) for _ in range(2)]
    live = torch.arange(rows, device=device)  # the original row of each row still decoded
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    # Each step's draws are kept as they come and written out once per set of live rows (no
    # per-step indexing); what a row draws after its EOS is blanked at the end.
    pending: list[tuple[torch.Tensor, ...]] = []

    def flush(end: int) -> None:
        if pending:
            for j, out in enumerate((tokens_out, *outputs)):
                out[live, end - len(pending) : end] = torch.stack([drawn[j] for drawn in pending], 1)
            pending.clear()

    steps = 0
    for step in range(max_new_tokens):
        tokens, *sampled = sample_tokens(
            logits, temperature=temperature, top_p=top_p, greedy=greedy, with_stats=with_stats
        )
        pending.append((tokens, *sampled))
        finished = finished | (tokens == eos_token_id)
        steps = step + 1
        done = int(finished.sum())
        if step + 1 == max_new_tokens or done == len(live):
            break
        if compact_fraction is not None and done and done >= compact_fraction * len(live) and len(live) > min_rows:
            flush(steps)
            keep = (~finished).nonzero().squeeze(1)
            if len(keep) < min_rows:  # pad with finished rows (what they draw is blanked)
                keep = torch.cat((keep, finished.nonzero().squeeze(1)[: min_rows - len(keep)])).sort().values
            live, tokens, finished, position = live[keep], tokens[keep], finished[keep], position[keep]
            if step_fn is not None:
                keys, values, bias = keys.index_select(1, keep), values.index_select(1, keep), bias[keep]
            else:
                mask = mask[keep]
                cache.batch_select_indices(keep)
        position = position + 1
        tokens = tokens.masked_fill(finished, pad_token_id)
        if step_fn is not None:
            cached = prompt_len + step
            logits = step_fn(tokens, position[:, 0], keys, values, bias, cached)  # writes position `cached`
            continue
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=mask[:, : prompt_len + step + 1],
            position_ids=position,
            **{cache_arg: cache},
            use_cache=True,
        ).logits[:, -1]
    flush(steps)
    tokens_out, outputs = tokens_out[:, :steps], [out[:, :steps] for out in outputs]
    is_eos = tokens_out == eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    tokens_out.masked_fill_(after_eos, pad_token_id)
    for out in outputs:
        out.masked_fill_(after_eos, 0.0)
    behavior, *recorded = outputs
    if not with_stats:
        return tokens_out, behavior
    temperature = 1.0 if greedy else temperature
    return tokens_out, behavior, RolloutStats(*recorded, initial_value, temperature)
