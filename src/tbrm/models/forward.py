"""The update's forward passes: log pi(a_h|s_h) of a batch's completion tokens, V(s_1), the
entropy and the critic's values, each from one forward pass over prompt + completion.

``completion_logprobs`` returns the per-token log-probs and the initial value
V(s_1) = logsumexp of the raw logits at the last prompt position (TBRM's Q-values are the raw
logits: arXiv 2505.15311, Eq. 6), which is all TBRM needs; the ratio-based objectives ask for the
log-probs at the sampling temperature. Rows that share a prompt (a GRPO group) run it once when
that saves compute (``shared_prompt_logits``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from tbrm.models.loading import recomputes_activations

if TYPE_CHECKING:
    from tbrm.rollout.batch import RolloutBatch


def accepts_logits_to_keep(model) -> bool:
    """The model's forward can skip the LM head on all but the last positions."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_argument(model) -> str:
    """The name the model's forward takes its KV cache by (``cache`` in recent transformers,
    which still accepts ``past_key_values`` with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
