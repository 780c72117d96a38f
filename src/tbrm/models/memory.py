"""Memory per data-parallel rank of each algorithm's models, from the model's size (docs/scaling.md).

Counted, in GB (1e9 bytes):

    policy      weights, gradients and AdamW's two moments, each in ``model.dtype`` (float32 under
                ``precision=bf16-mixed``: 16 bytes a parameter); sharded over N ranks
                (``trainer=fsdp``, ``tbrm.sharding``) each rank keeps 1/N of all four, plus, during a
                step, the gathered weights and their unsharded gradients (the peak counted here)
    reference   the frozen reference's weights in ``model.inference_dtype`` (when beta > 0, or
                ``track_kl_ref``)
    critic      PPO's value model: a second policy-sized trained model
    vllm        the vLLM engine's copy of the policy in its dtype (``rollout.engine=vllm``)

Not counted: activations (bounded by ``update.micro_batch_tokens`` and gradient checkpointing)
and vLLM's KV cache (``rollout.vllm.gpu_memory_utilization`` of the device). Under DDP every
rank holds all of it; the reference and vLLM's copy are never sharded.

    python -m tbrm.models.memory                       # the table of docs/scaling.md
    python -m tbrm.models.memory <hub name or folder>  # the same for any model (its config.json)
"""

from __future__ import annotations

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# the models each algorithm keeps besides the policy (with its default beta > 0)
EXTRA_MODELS = {"tbrm": ("reference",), "grpo": ("reference",), "ppo": ("reference", "critic")}
# parameters of the models conf/model/ names (their published sizes; count_params gives any other)
SIZES = {"Qwen2.5-Math-1.5B": 1.54e9, "Qwen2.5-Math-7B": 7.62e9}


def count_params(name_or_path: str) -> int:
    """Parameters of a causal LM from its config alone (built on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name_or_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def rank_memory_gb(params: float, algorithm: str, *, dtype: str = "float32", inference_dtype: str = "bfloat16",
                   vllm: bool = False, shards: int = 1) -> dict[str, float]:  # fmt: skip
    """GB per rank of each model of ``algorithm`` for a policy of ``params`` parameters, and ``total``;
    ``shards``: the ranks the trained models are sharded over (1: DDP)."""
    if algorithm not in EXTRA_MODELS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(EXTRA_MODELS)}.")
    trained = params * 4 * BYTES[dtype] / 1e9  # weights, gradients, two AdamW moments
    if shards > 1:  # 1/N of the four, and the gathered weights with their unsharded gradients in a step
        trained = trained / shards + params * 2 * BYTES[dtype] / 1e9
    parts = {"policy": trained}
    if "reference" in EXTRA_MODELS[algorithm]:
        parts["reference"] = params * BYTES[inference_dtype] / 1e9
    if "critic" in EXTRA_MODELS[algorithm]:
        parts["critic"] = trained
    if vllm:
        parts["vllm"] = params * BYTES[inference_dtype] / 1e9
    return parts | {"total": sum(parts.values())}


def table(sizes: dict[str, float] = SIZES) -> str:
    """The markdown table of docs/scaling.md: each model of ``sizes`` and algorithm, with vLLM."""
    lines = ["| model | algorithm | policy | reference | critic | vLLM copy | total, DDP | total, FSDP on 4 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, params in sizes.items():
        for algorithm in EXTRA_MODELS:
            gb = rank_memory_gb(params, algorithm, vllm=True)
            cells = [f"{gb[k]:.1f}" if k in gb else "-" for k in ("policy", "reference", "critic", "vllm", "total")]
            cells.append(f"{rank_memory_gb(params, algorithm, vllm=True, shards=4)['total']:.1f}")
            lines.append(f"| {name} | {algorithm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(table({name: count_params(name) for name in sys.argv[1:]} or SIZES))
