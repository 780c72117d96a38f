"""Loading a policy and its tokenizer by hub name or local directory (``from_pretrained``).

``model.name_or_path`` resolves as ``from_pretrained`` resolves it: a directory written by
``save_pretrained``, or a hub name (``Qwen/Qwen2.5-Math-1.5B``) found in the Hugging Face cache
(``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) or downloaded. :func:`check_source` says
what is wrong before any work and in well under a second: a path that is not a directory, a name
that is not a hub name, a hub name missing from the cache with ``HF_HUB_OFFLINE=1``, or one the
hub does not know or cannot be reached for (one request, instead of ``from_pretrained``'s half a
minute of retries).

The ``model/`` config group says how: ``dtype`` (float32 on CPU, bfloat16 on GPU),
``attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``; null: transformers' choice),
``gradient_checkpointing`` (recompute activations in the backward pass: less memory for long
responses, about a third more compute) and ``trust_remote_code``.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    check_source(name_or_path)
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _looks_local(text: str) -> bool:
    """A path rather than a hub name: it starts like one, or has more parts than ``org/name``."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)


def check_source(name_or_path: str, key: str = "model.name_or_path") -> str:
    """``name_or_path`` when ``from_pretrained`` can load it: a local directory, or a hub name in the
    Hugging Face cache or on a reachable hub; otherwise a clear error naming ``key`` and the fix."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return text
    if _looks_local(text) or path.exists():
        raise FileNotFoundError(
            f"{key}: model directory {text!r} does not exist; give a directory written by save_pretrained, or a hub "
            "name such as Qwen/Qwen2.5-Math-1.5B."
        )
    try:
        huggingface_hub.utils.validate_repo_id(text)
    except HFValidationError as err:
        raise ValueError(f"{key}={text!r} is neither a directory nor a hub name ({err}).") from err
    if isinstance(huggingface_hub.try_to_load_from_cache(text, "config.json"), str):
        return text  # in the cache: from_pretrained reads it from there, online or not
    cache = huggingface_hub.constants.HF_HUB_CACHE
    if huggingface_hub.is_offline_mode():
        raise FileNotFoundError(
            f"{key}={text!r} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading "
            f"it. Download it where there is network (`hf download {text}`), set HF_HUB_CACHE (or HF_HOME) to a "
            "cache that holds it, or give a local directory."
        )
    try:
        huggingface_hub.HfApi().model_info(text, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise FileNotFoundError(
            f"{key}={text!r}: the hub has no such model, or it is private or gated (log in with `hf auth login` "
            f"or set HF_TOKEN) ({type(err).__name__})."
        ) from err
    except Exception as err:  # no network, DNS, proxy, timeout: the hub cannot be reached
        raise ConnectionError(
            f"{key}={text!r} is not in the Hugging Face cache ({cache}) and the hub cannot be reached "
            f"({type(err).__name__}: {err}). Check the network, or download the model elsewhere into the cache, "
            "or give a local directory."
        ) from err
    return text


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


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, key: str = "model.name_or_path"):
    """``AutoTokenizer.from_pretrained`` after :func:`check_source`."""
    return AutoTokenizer.from_pretrained(check_source(name_or_path, key), trust_remote_code=trust_remote_code)


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
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, tokenizer
