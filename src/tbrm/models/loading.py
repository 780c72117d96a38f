"""Loading a policy and its tokenizer by hub name or local directory (``from_pretrained``).

The ``model/`` config group says how: ``dtype`` (float32 on CPU, bfloat16 on GPU),
``attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``; null: transformers' choice),
``gradient_checkpointing`` (recompute activations in the backward pass: less memory for long
responses, about a third more compute) and ``trust_remote_code``.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# the keys of model/ that load_model_and_tokenizer takes
LOAD_OPTIONS = ("dtype", "attn_implementation", "gradient_checkpointing", "trust_remote_code")


def pretrained_kwargs(
    name_or_path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Validated keyword arguments of ``from_pretrained`` (errors name the config key and the fix)."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)} (got {dtype!r}).")
    if attn_implementation is not None and attn_implementation not in ATTENTION:
        raise ValueError(
            f"model.attn_implementation must be null or one of {list(ATTENTION)} (got {attn_implementation!r})."
        )
    if os.path.sep in str(name_or_path) and not os.path.isdir(name_or_path):
        raise FileNotFoundError(
            f"model directory {name_or_path!r} does not exist; give a hub name or a directory "
            "written by save_pretrained."
        )
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing on a transformers model (non-reentrant, so frozen inputs are fine)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # generate() turns the cache back on where it is asked for


def recomputes_activations(model) -> bool:
    """Activation (gradient) checkpointing is on for this transformers model."""
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.2x
    return bool(model.is_gradient_checkpointing if flag is None else flag)


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
):
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` from a hub name or a saved directory.

    The tokenizer pads on the left (generation appends on the right) and has a pad token.
    """
    kwargs = pretrained_kwargs(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, tokenizer
