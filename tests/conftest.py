"""Shared fixtures: a tiny random-init model saved with save_pretrained, repository paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random-init Llama and its character tokenizer, written with save_pretrained."""
    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.models.tiny import build_char_tokenizer, build_tiny_model

    path = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_char_tokenizer(ArithmeticTask().alphabet())
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


QWEN_CHAT_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def qwen2_model_dir(tmp_path_factory) -> Path:
    """A random-init model of the Qwen2 architecture (2 layers, grouped-query attention, tied
    embeddings) and a byte-level BPE ``Qwen2Tokenizer`` with ChatML special tokens and a chat
    template, written with save_pretrained: the paper presets' loading path without the weights."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [f"Find $x$ if $x^{i} + {i}x = {i * i}$. The answer is \\boxed{{{i}}}." for i in range(200)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in state["merges"]]
    tokenizer = Qwen2TokenizerFast(vocab=state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("qwen2_model")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """Never reach a W&B server from tests; keep wandb's own files inside the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("TBRM_TEST_WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def math_data_dir() -> Path:
    """The local benchmark files (``TBRM_MATH_DATA``, default ``../shared/data/math``).

    Missing files fail the test under CI (``CI=true``) and skip it elsewhere, so a checkout
    without the folder still runs its suite.
    """
    path = Path(os.environ.get("TBRM_MATH_DATA", ROOT.parent / "shared" / "data" / "math"))
    if not (path / "math500.jsonl").exists():
        reason = f"benchmark files not found in {path}; set TBRM_MATH_DATA to the folder that holds math500.jsonl"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
