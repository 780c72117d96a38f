"""Loading a policy and its tokenizer by hub name or local directory (``from_pretrained``)."""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model_and_tokenizer(name_or_path: str, *, dtype: str = "float32", trust_remote_code: bool = False):
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` from a hub name or a saved directory.

    The tokenizer pads on the left (generation appends on the right) and has a pad token.
    """
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)} (got {dtype!r}).")
    if os.path.sep in str(name_or_path) and not os.path.isdir(name_or_path):
        raise FileNotFoundError(
            f"model directory {name_or_path!r} does not exist; give a hub name or a directory "
            "written by save_pretrained."
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    return model, tokenizer
