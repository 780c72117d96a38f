"""Random-init stand-ins of the Qwen2 architecture (the Qwen2.5-Math models' family), for tests
and benchmarks on machines that cannot download weights.

:func:`save_qwen2_standin` writes a ``Qwen2ForCausalLM`` and a byte-level BPE ``Qwen2Tokenizer``
(ChatML special tokens, a chat template) with ``save_pretrained``, so the paper presets load
them through the same ``from_pretrained`` path as ``Qwen/Qwen2.5-Math-1.5B``. ``SHAPES`` holds
the published shapes of the real models (a random model of that shape has their memory and
compute, not their skill) and a tiny one for CPU tests.
"""

from __future__ import annotations

import json
from pathlib import Path

# hidden, layers, attention heads, key-value heads, MLP width, vocabulary
SHAPES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64, vocab_size=None),
    # head size 64, which vLLM's CPU attention takes: CPU checks of rollout.engine=vllm
    "small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=256, vocab_size=None),
    "qwen2.5-math-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                              intermediate_size=8960, vocab_size=151936),
    "qwen2.5-math-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            intermediate_size=18944, vocab_size=152064),
}  # fmt: skip
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_bpe_tokenizer(corpus: list[str], vocab_size: int = 400):
    """A byte-level BPE ``Qwen2Tokenizer`` trained on ``corpus`` (any text encodes), with the
    ChatML specials and a chat template; ``<|endoftext|>`` is EOS and padding, as in Qwen2.5."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in state["merges"]]
    tokenizer = Qwen2TokenizerFast(vocab=state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen2_config(shape: str, tokenizer, *, dtype: str = "bfloat16"):
    """The ``Qwen2Config`` of ``shape`` (see ``SHAPES``) for ``tokenizer``'s special tokens."""
    from transformers import Qwen2Config

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)} (got {shape!r}).")
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tokenizer)
    return Qwen2Config(
        **dims,
        max_position_embeddings=4096,
        tie_word_embeddings=dims["hidden_size"] < 2048,  # 1.5B ties its embeddings, 7B does not
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )


def save_qwen2_standin(path: str | Path, shape: str = "tiny", *, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Write a random-init Qwen2 model of ``shape`` (see ``SHAPES``) and its tokenizer to ``path``.

    The vocabulary of a real shape is the real model's (151,936 rows for 1.5B), larger than the
    tokenizer's: the extra ids decode to nothing, as unused ids do in Qwen's own vocabulary.
    """
    import torch
    from transformers import Qwen2ForCausalLM

    corpus = [f"Find $x$ if $x^{i} + {i}x = {i * i}$. The answer is \\boxed{{{i}}}." for i in range(200)]
    tokenizer = build_bpe_tokenizer(corpus)
    config = qwen2_config(shape, tokenizer, dtype=dtype)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() and shape not in ("tiny", "small") else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
