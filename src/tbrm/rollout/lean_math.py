"""One decode step of a Llama-family model as a pure tensor function (``step``), eager or for export.

Below a few hundred million parameters, and on CPU, a decode step of a Hugging Face model costs
more in Python and small-op dispatch (module calls, mask construction, a six-op RMSNorm, the
cache's bookkeeping) than in arithmetic (``benchmarks/README.md``). ``step`` is the same
computation as the model's ``forward`` for one new token per row:

- on the model's weights packed once per rollout (``tbrm.rollout.lean_step.LeanStep``: the
  q/k/v and gate/up matrices concatenated, every matrix transposed for a plain matrix product);
- against a KV cache held as two tensors, ``keys`` and ``values`` of shape
  (layers, rows, kv_heads, positions, head_dim); the step reads them and returns the new
  token's keys and values rather than writing them, so it is a pure function of its inputs
  (eagerly it may write them in place, ``write=True``);
- with the new token attending to itself through a separate score, merged into the same
  softmax as the cached positions (no concatenation of the cache).

A pure function with no Python state is what ``torch.export`` captures whole
(``tbrm.rollout.aot`` compiles it ahead of time). It covers the decoder layout shared by Llama,
Mistral (without a sliding window), Qwen2 and Qwen3: pre-norm RMSNorm, rotary position embedding
of the default type, grouped-query attention with optional q/k/v biases and optional per-head q/k
RMSNorm (Qwen3), SwiGLU MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: ``weight * (x * rsqrt(mean(x^2) + eps))``, the normalisation in float32 (one
    fused ``rms_norm`` for float32 inputs; lower precisions cast back before the weight, as HF)."""
    if x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, eager: bool) -> torch.Tensor:
    """The rotary embedding ``x * cos + rotate_half(x) * sin`` (HF's ``apply_rotary_pos_emb``),
    with ``rotate_half(x) * sin == swap_halves(x) * sin_signed`` and ``sin_signed = [-sin_1, sin_2]``.
    Eagerly one flip and one multiply-add; for export, the concatenation Inductor fuses best."""
    half = x.shape[-1] // 2
    if eager:
        return torch.addcmul(x * cos, x.unflatten(-1, (2, half)).flip(-2).flatten(-2), sin_signed)
    return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * sin_signed


def step(
    params: dict,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    cached: int,
    *,
    heads: int,
    kv_heads: int,
    scaling: float,
    write: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Next-token logits (rows, vocab) for ``tokens`` (rows,) at ``positions`` (rows,), against
    the first ``cached`` positions of the cache buffers ``keys`` / ``values`` (layers, rows,
    kv_heads, capacity, head_dim); ``bias`` (rows, capacity) is 0 where attended and -inf on
    padding.

    Pure (``write`` False, what ``torch.export`` captures): the cache is only read, and the new
    token's keys and values (layers, rows, kv_heads, head_dim) are returned for the caller to
    append. Attention is ``softmax([q.K^T, q.k_new] * scaling + [bias, 0]) . [V; v_new]``, the
    new token's own score merged into the softmax. With ``write`` (the eager step) each layer
    writes its new keys and values at position ``cached`` first and attends over ``cached + 1``
    positions with one ``scaled_dot_product_attention`` (fewer operators); it returns
    ``(logits, None, None)``. Both compute what ``forward`` computes after appending the token.
    """
    rows, dim = tokens.shape[0], keys.shape[-1]
    group = heads // kv_heads
    joint = heads + kv_heads  # q and k heads
    hidden = F.embedding(tokens, params["embed"])
    cos, sin = params["cos"][positions][:, None], params["sin_signed"][positions][:, None]  # (rows, 1, dim)
    end = cached + 1 if write else cached
    keys, values, bias = keys[:, :, :, :end], values[:, :, :, :end], bias[:, :end]
    new_keys, new_values = [], []
    for i, p in enumerate(params["layers"]):
        x = _rms(hidden, p["input_norm"], p["input_eps"])
        qkv = x @ p["qkv"] if p["qkv_bias"] is None else torch.addmm(p["qkv_bias"], x, p["qkv"])
        q, k, v = (
            qkv[:, a * dim : b * dim].view(rows, b - a, dim)
            for a, b in ((0, heads), (heads, joint), (joint, joint + kv_heads))
        )
        if p["q_norm"] is not None:
            q, k = _rms(q, p["q_norm"], p["qk_eps"]), _rms(k, p["k_norm"], p["qk_eps"])
        if write and p["q_norm"] is None:  # eager: q and k are adjacent in qkv, rotated in one go
            qk = _rotate(qkv[:, : joint * dim].view(rows, joint, dim), cos, sin, eager=True)
            q, k = qk[:, :heads], qk[:, heads:]
        else:
            q, k = _rotate(q, cos, sin, eager=write), _rotate(k, cos, sin, eager=write)
        q = q.reshape(rows, kv_heads, group, dim)
        if write:
            keys[i, :, :, cached], values[i, :, :, cached] = k, v
            out = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=bias[:, None, None], scale=scaling)
        else:
            new_keys.append(k)
            new_values.append(v)
            scores = torch.matmul(q, keys[i].transpose(-1, -2)) * scaling + bias[:, None, None]
            own = (q * k[:, :, None]).sum(-1, keepdim=True) * scaling
            weights = torch.cat((scores, own), -1).softmax(-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(weights[..., :-1], values[i]) + weights[..., -1:] * v[:, :, None]
        hidden = torch.addmm(hidden, out.reshape(rows, heads * dim), p["o"])
        x = _rms(hidden, p["post_norm"], p["post_eps"])
        gate_up = x @ p["gate_up"]
        inner = gate_up.shape[-1] // 2
        hidden = torch.addmm(hidden, F.silu(gate_up[:, :inner]) * gate_up[:, inner:], p["down"])
    logits = F.linear(_rms(hidden, params["norm"], params["norm_eps"]), params["head"], params["head_bias"])
    if write:
        return logits, None, None
    return logits, torch.stack(new_keys), torch.stack(new_values)


class _Sliced(torch.nn.Module):
    """The pure ``step`` on whole cache buffers, for export: the cached length is the size of
    ``length`` (an empty (cached, 0) tensor), so every size and stride the compiled code sees is a
    size of an input (a slice of a buffer has strides that follow its capacity, which no input
    would name)."""

    def __init__(self, heads: int, kv_heads: int, scaling: float) -> None:
        super().__init__()
        self.options = {"heads": heads, "kv_heads": kv_heads, "scaling": scaling}

    def forward(self, params, tokens, positions, keys, values, bias, length):
        return step(params, tokens, positions, keys, values, bias, length.shape[0], **self.options)
