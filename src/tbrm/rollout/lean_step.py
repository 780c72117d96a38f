"""``LeanStep``: the decode step of a Llama-family model on its packed weights, eager or compiled.

``LeanStep`` runs ``tbrm.rollout.lean_math.step`` on the model's weights as they are when the
rollout starts, packed once per rollout; a rollout never spans an optimizer step, so it decodes the
current policy, and the packed copy (the size of the decoder layers) is freed when the rollout
ends. ``rollout.engine=compiled`` runs the step compiled ahead of time (``tbrm.rollout.aot``),
``compact`` runs it eagerly, ``auto`` compiles it where it can.

``LeanStep.for_model`` returns None for a model outside the layout ``lean_math`` covers (Llama,
Mistral without a sliding window, Qwen2, Qwen3), and the prompt's prefill always goes through
``forward``.
"""

from __future__ import annotations

import json
import logging

import torch

from tbrm.rollout.aot import compiled_step, compiler_found, describe
from tbrm.rollout.cache import PreallocatedLayer
from tbrm.rollout.lean_math import step

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
log = logging.getLogger(__name__)
_WARNED: list[bool] = []  # rollout.engine=auto has said once that it fell back


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))


def _plain_linears(layer) -> bool:
    """Every projection is a plain ``nn.Linear`` (an adapter such as LoRA wraps them: its extra
    computation would be skipped by ``F.linear``, so such a model takes ``forward``)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(type(p) is torch.nn.Linear for p in projections)


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
            "cos": (angles.cos().repeat(1, 2) * scale).to(dtype),
            "sin_signed": (torch.cat((-angles.sin(), angles.sin()), -1) * scale).to(dtype),
            "layers": layers,
            "norm": body.norm.weight,
            "norm_eps": _eps(body.norm),
            "head": model.lm_head.weight,
            "head_bias": model.lm_head.bias,
        }
        # key order of the spec: the order the call flattens the params in
        self.compiled_fn = compiled_step(json.dumps(self.spec())) if compiled else None

    @classmethod
    def for_model(cls, model, cache, *, compiled: bool | None = False) -> LeanStep | None:
        """A step for ``model`` (rotary tables for ``cache``'s capacity) if its architecture is
        covered and every layer of ``cache`` is a ``PreallocatedLayer``; None otherwise (the
        caller falls back to ``forward``). ``compiled``: True compiles it (float32 models only; or
        raises), False runs it eagerly, None (``rollout.engine=auto``) compiles it for a float32
        model on CPU, outside autocast, where a C++ compiler is found, and runs it eagerly
        otherwise (with one warning if the compilation fails)."""
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
        if not covered:
            return None
        capacity = cache.layers[0].capacity
        autocast = torch.is_autocast_enabled(model.device.type)
        if compiled and (model.dtype != torch.float32 or autocast):
            what = "under autocast" if autocast else f"a {model.dtype} model"
            raise ValueError(
                f"rollout.engine=compiled compiles the decode step of float32 models without autocast, not {what} "
                "(trainer.precision=32-true): use rollout.engine=compact."
            )
        if compiled is None:
            if model.device.type != "cpu" or model.dtype != torch.float32 or autocast or not compiler_found():
                return cls(model, capacity)
            try:
                return cls(model, capacity, compiled=True)
            except RuntimeError as error:
                if not _WARNED:
                    _WARNED.append(True)
                    log.warning("rollout.engine=auto runs the decode step eagerly (as compact): %s", error)
                return cls(model, capacity)
        return cls(model, capacity, compiled=compiled)

    @torch.no_grad()
    def __call__(self, tokens, positions, keys, values, bias, cached: int) -> torch.Tensor:
        """``step`` on the weights packed for this rollout, against the first ``cached`` positions
        of the cache buffers ``keys``, ``values`` (layers, rows, kv_heads, capacity, head_dim) and
        ``bias`` (rows, capacity): writes the new token's keys and values at position ``cached``
        and returns the next-token logits (rows, vocab)."""
        if self.compiled:
            length = torch.empty(cached, 0, device=keys.device)
            logits, new_keys, new_values = self.compiled_fn(self.params, tokens, positions, keys, values, bias, length)
            keys[:, :, :, cached], values[:, :, :, cached] = new_keys, new_values
            return logits
        options = {"heads": self.heads, "kv_heads": self.kv_heads, "scaling": self.scaling}
        return step(self.params, tokens, positions, keys, values, bias, cached, **options, write=True)[0]

    def spec(self) -> dict:
        """What the compiled step depends on: the weights' shapes and dtypes, and the constants."""
        dim = self.params["cos"].shape[-1]
        options = {"heads": self.heads, "kv_heads": self.kv_heads, "scaling": self.scaling, "head_dim": dim}
        params = describe(self.params)
        params["cos"]["shape"][0] = params["sin_signed"]["shape"][0] = None  # the cache's capacity: any
        return {"params": params, "device": self.params["head"].device.type, **options}
