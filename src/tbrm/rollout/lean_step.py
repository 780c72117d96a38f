"""One decode step of a Llama-family model in a few fused tensor ops, on the model's own weights.

Below a few hundred million parameters, and on CPU, a decode step of a Hugging Face model costs
more in Python and small-op dispatch (module calls, mask construction, a six-op RMSNorm, the
cache's bookkeeping) than in arithmetic: 3 ms per step for the 2.6M-parameter embedded default
at any batch size, against 1.8 ms for the same step here (``benchmarks/README.md``).
``LeanStep`` runs the same computation as the model's ``forward`` for one new token per row,
reading the modules' current parameters at every call (nothing is copied, so it never drifts
from the policy being trained), and writes the new keys and values into the preallocated cache
of ``tbrm.rollout.decode``.

It covers the decoder layout shared by Llama, Mistral (without a sliding window), Qwen2 and
Qwen3: pre-norm RMSNorm, rotary position embedding of the default type, grouped-query attention
with optional q/k/v biases and optional per-head q/k RMSNorm (Qwen3), SwiGLU MLP. ``LeanStep.for_model``
returns None for anything else, and the prompt's prefill always goes through ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """HF's RMSNorm (``weight * normalise(x in float32)``) as one fused op plus a multiply."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def _plain_linears(layer) -> bool:
    """Every projection is a plain ``nn.Linear`` (an adapter such as LoRA wraps them: its extra
    computation would be skipped by ``F.linear``, so such a model takes ``forward``)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(type(p) is torch.nn.Linear for p in projections)


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


class LeanStep:
    """The decode step of a supported model; build with :meth:`for_model`."""

    def __init__(self, model) -> None:
        self.model = model
        self.body = model.model
        first = self.body.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.heads = model.config.num_attention_heads
        self.kv_heads = getattr(model.config, "num_key_value_heads", None) or self.heads

    @classmethod
    def for_model(cls, model, cache) -> LeanStep | None:
        """A step for ``model`` if its architecture is covered and every layer of ``cache`` is a
        ``PreallocatedLayer``; None otherwise (the caller falls back to ``forward``)."""
        from tbrm.rollout.decode import PreallocatedLayer

        config = model.config
        rope = getattr(config, "rope_parameters", None) or {}
        covered = (
            config.model_type in SUPPORTED
            and rope.get("rope_type", "default") == "default"
            and getattr(config, "hidden_act", "silu") == "silu"
            and not getattr(config, "mlp_bias", False)
            and all(type(layer) is PreallocatedLayer for layer in cache.layers)
            and hasattr(model, "model")
            and hasattr(getattr(model.model, "rotary_emb", None), "inv_freq")
            and all(_plain_linears(layer) for layer in model.model.layers)
        )
        return cls(model) if covered else None

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache, attn_bias: torch.Tensor) -> torch.Tensor:
        """Next-token logits (rows, vocab) for ``tokens`` (rows,) at ``positions`` (rows,), given
        ``attn_bias`` (rows, cached + 1): 0 where attended, -inf on padding. Appends one
        position to every layer of ``cache``."""
        body, rows, dim = self.body, tokens.shape[0], self.head_dim
        hidden = body.embed_tokens(tokens)[:, None]
        rotary = body.rotary_emb
        freqs = positions[:, None].float() * rotary.inv_freq
        angles = torch.cat((freqs, freqs), -1)[:, None, None]
        scale = getattr(rotary, "attention_scaling", 1.0)
        cos, sin = (angles.cos() * scale).to(hidden.dtype), (angles.sin() * scale).to(hidden.dtype)
        bias = attn_bias[:, None, None].to(hidden.dtype)
        for layer, kv in zip(body.layers, cache.layers, strict=True):
            attn = layer.self_attn
            x = _rms_norm(hidden, layer.input_layernorm)
            q = _linear(x, attn.q_proj).view(rows, 1, self.heads, dim).transpose(1, 2)
            k = _linear(x, attn.k_proj).view(rows, 1, self.kv_heads, dim).transpose(1, 2)
            v = _linear(x, attn.v_proj).view(rows, 1, self.kv_heads, dim).transpose(1, 2)
            if getattr(attn, "q_norm", None) is not None:
                q, k = _rms_norm(q, attn.q_norm), _rms_norm(k, attn.k_norm)
            keys, values = kv.update(_rotate(k, cos, sin), v)
            out = F.scaled_dot_product_attention(
                _rotate(q, cos, sin),
                keys,
                values,
                attn_mask=bias,
                scale=self.scaling,
                enable_gqa=self.kv_heads != self.heads,
            )
            hidden = hidden + _linear(out.transpose(1, 2).reshape(rows, 1, -1), attn.o_proj)
            x = _rms_norm(hidden, layer.post_attention_layernorm)
            mlp = layer.mlp
            hidden = hidden + _linear(F.silu(_linear(x, mlp.gate_proj)) * _linear(x, mlp.up_proj), mlp.down_proj)
        return self.model.lm_head(_rms_norm(hidden, body.norm))[:, 0]
