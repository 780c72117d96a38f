import pytest
import torch

from tbrm.data.hub import render_prompt
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.models.standin import build_bpe_tokenizer, qwen2_config


def test_tiny_standin_loads_through_from_pretrained(qwen2_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(qwen2_model_dir), attn_implementation="sdpa")
    assert type(model).__name__ == "Qwen2ForCausalLM" and type(tokenizer).__name__.startswith("Qwen2Tokenizer")
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "left"
    text = "Solve $x^2 = 4$ for $x > 0$; \\boxed{2}."
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: any text round-trips
    prompt = render_prompt("What is 1+1?", "qwen_math", tokenizer)
    assert prompt == render_prompt("What is 1+1?", "qwen_math")  # the chat template writes ChatML
    assert prompt.endswith("<|im_start|>assistant\n") and "\\boxed{}" in prompt
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("<|im_end|>")) == ["<|im_end|>"]


@pytest.mark.parametrize("shape,params", [("qwen2.5-math-1.5b", 1.54e9), ("qwen2.5-math-7b", 7.62e9)])
def test_real_shapes_have_the_published_parameter_counts(shape, params):
    from transformers import Qwen2ForCausalLM

    config = qwen2_config(shape, build_bpe_tokenizer(["a b c"], vocab_size=300))
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    count = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert count == pytest.approx(params, rel=0.01)
    with pytest.raises(ValueError, match="shape must be one of"):
        qwen2_config("70b", None)
