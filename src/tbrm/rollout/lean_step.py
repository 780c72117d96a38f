"""One decode step of a Llama-family model as a pure tensor function, eager or compiled.

Below a few hundred million parameters, and on CPU, a decode step of a Hugging Face model costs
more in Python and small-op dispatch (module calls, mask construction, a six-op RMSNorm, the
cache's bookkeeping) than in arithmetic (``benchmarks/README.md``). ``LeanStep`` runs the same
computation as the model's ``forward`` for one new token per row:

- on the model's weights as they are when the rollout starts, packed once per rollout (the
  q/k/v and gate/up matrices concatenated, every matrix transposed for a plain matrix product);
  a rollout never spans an optimizer step, so it decodes the current policy, and the packed
  copy (the size of the decoder layers) is freed when the rollout ends;
- against a KV cache held as two tensors, ``keys`` and ``values`` of shape
  (layers, rows, kv_heads, positions, head_dim); the step reads them and returns the new
  token's keys and values rather than writing them, so it is a pure function of its inputs;
- with the new token attending to itself through a separate score, merged into the same
  softmax as the cached positions (no concatenation of the cache).

A pure function with no Python state is what ``torch.compile`` turns into one graph:
``rollout.engine=compiled`` compiles it once per process with dynamic shapes (any rows, any
cache length; inductor's generated CPU kernels fuse the norms, rotary embedding and SwiGLU), and
``rollout.engine=compact`` runs it eagerly.

It covers the decoder layout shared by Llama, Mistral (without a sliding window), Qwen2 and
Qwen3: pre-norm RMSNorm, rotary position embedding of the default type, grouped-query attention
with optional q/k/v biases and optional per-head q/k RMSNorm (Qwen3), SwiGLU MLP.
``LeanStep.for_model`` returns None for anything else, and the prompt's prefill always goes
through ``forward``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: ``weight * (x * rsqrt(mean(x^2) + eps))``, the normalisation in float32."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))


def _plain_linears(layer) -> bool:
    """Every projection is a plain ``nn.Linear`` (an adapter such as LoRA wraps them: its extra
    computation would be skipped by ``F.linear``, so such a model takes ``forward``)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(type(p) is torch.nn.Linear for p in projections)


def step(
    params: dict,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    *,
    heads: int,
    kv_heads: int,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token logits (rows, vocab) for ``tokens`` (rows,) at ``positions`` (rows,), and the
    new token's keys and values (layers, rows, kv_heads, head_dim) for the caller to append.

    ``keys`` / ``values`` (layers, rows, kv_heads, cached, head_dim) hold the cached positions and
    ``bias`` (rows, cached) is 0 where attended and -inf on padding. Attention is
    ``softmax([q.K^T, q.k_new] * scaling + [bias, 0]) . [V; v_new]``, the new token's own score
    merged into the softmax, which is what ``forward`` computes after appending it to the cache.
    """
    rows, dim = tokens.shape[0], keys.shape[-1]
    group = heads // kv_heads
    hidden = F.embedding(tokens, params["embed"])
    cos, sin = params["cos"][positions][:, None], params["sin"][positions][:, None]  # (rows, 1, dim)
    half = dim // 2
    new_keys, new_values = [], []
    for i, p in enumerate(params["layers"]):
        x = _rms(hidden, p["input_norm"], p["input_eps"])
        qkv = x @ p["qkv"] if p["qkv_bias"] is None else torch.addmm(p["qkv_bias"], x, p["qkv"])
        q = qkv[:, : heads * dim].view(rows, heads, dim)
        k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(rows, kv_heads, dim)
        v = qkv[:, (heads + kv_heads) * dim :].view(rows, kv_heads, dim)
        if p["q_norm"] is not None:
            q, k = _rms(q, p["q_norm"], p["qk_eps"]), _rms(k, p["k_norm"], p["qk_eps"])
        q = q * cos + torch.cat((-q[..., half:], q[..., :half]), -1) * sin
        k = k * cos + torch.cat((-k[..., half:], k[..., :half]), -1) * sin
        new_keys.append(k)
        new_values.append(v)
        q = q.view(rows, kv_heads, group, dim)
        cached = torch.matmul(q, keys[i].transpose(-1, -2)) * scaling + bias[:, None, None]
        own = (q * k[:, :, None]).sum(-1, keepdim=True) * scaling
        weights = torch.cat((cached, own), -1).softmax(-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights[..., :-1], values[i]) + weights[..., -1:] * v[:, :, None]
        hidden = torch.addmm(hidden, out.reshape(rows, heads * dim), p["o"])
        x = _rms(hidden, p["post_norm"], p["post_eps"])
        gate_up = x @ p["gate_up"]
        inner = gate_up.shape[-1] // 2
        hidden = torch.addmm(hidden, F.silu(gate_up[:, :inner]) * gate_up[:, inner:], p["down"])
    logits = F.linear(_rms(hidden, params["norm"], params["norm_eps"]), params["head"], params["head_bias"])
    return logits, torch.stack(new_keys), torch.stack(new_values)


@functools.cache
def compiled_step():
    """``step`` under ``torch.compile`` (dynamic shapes, one graph): compiled on its first call,
    then reused for every rollout, batch size and cache length of the process."""
    return torch.compile(step, dynamic=True, fullgraph=True)


class LeanStep:
    """The decode step of a supported model; build with :meth:`for_model`."""

    @torch.no_grad()
    def __init__(self, model, capacity: int, compiled: bool = False) -> None:
        body = model.model
        attn = body.layers[0].self_attn
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.scaling = float(attn.scaling)
        self.compiled = compiled
        rotary = body.rotary_emb
        angles = torch.arange(capacity, device=rotary.inv_freq.device).float()[:, None] * rotary.inv_freq
        angles = torch.cat((angles, angles), -1)
        scale = getattr(rotary, "attention_scaling", 1.0)
        dtype = model.lm_head.weight.dtype
        layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            q_norm = getattr(a, "q_norm", None)
            biases = (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
            layers.append(
                {
                    "input_norm": layer.input_layernorm.weight,
                    "input_eps": _eps(layer.input_layernorm),
                    "qkv": torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)).t().contiguous(),
                    "qkv_bias": None if biases[0] is None else torch.cat(biases),
                    "q_norm": None if q_norm is None else q_norm.weight,
                    "k_norm": None if q_norm is None else a.k_norm.weight,
                    "qk_eps": 0.0 if q_norm is None else _eps(q_norm),
                    "o": a.o_proj.weight.t().contiguous(),
                    "post_norm": layer.post_attention_layernorm.weight,
                    "post_eps": _eps(layer.post_attention_layernorm),
                    "gate_up": torch.cat((m.gate_proj.weight, m.up_proj.weight)).t().contiguous(),
                    "down": m.down_proj.weight.t().contiguous(),
                }
            )
        self.params = {
            "embed": body.embed_tokens.weight,
            "cos": (angles.cos() * scale).to(dtype),
            "sin": (angles.sin() * scale).to(dtype),
            "layers": layers,
            "norm": body.norm.weight,
            "norm_eps": _eps(body.norm),
            "head": model.lm_head.weight,
            "head_bias": model.lm_head.bias,
        }

    @classmethod
    def for_model(cls, model, cache, *, compiled: bool = False) -> LeanStep | None:
        """A step for ``model`` (rotary tables for ``cache``'s capacity) if its architecture is
        covered and every layer of ``cache`` is a ``PreallocatedLayer``; None otherwise (the
        caller falls back to ``forward``)."""
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
        return cls(model, cache.layers[0].capacity, compiled=compiled) if covered else None

    @torch.no_grad()
    def __call__(self, tokens, positions, keys, values, bias):
        """``step`` on the weights packed for this rollout (see there)."""
        fn = compiled_step() if self.compiled else step
        return fn(
            self.params, tokens, positions, keys, values, bias,
            heads=self.heads, kv_heads=self.kv_heads, scaling=self.scaling,
        )  # fmt: skip
