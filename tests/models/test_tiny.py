import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from tbrm.data.arithmetic import ArithmeticTask
from tbrm.models.tiny import build_char_tokenizer, build_tiny_model


def test_char_tokenizer_round_trip_through_save_pretrained(tmp_path):
    tokenizer = build_char_tokenizer(ArithmeticTask().alphabet())
    assert len(tokenizer) == 4 + len(set(ArithmeticTask().alphabet()))
    text = "47*86=47*6=282|47*8=376|282+3760=4042|#### 4042"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 2, "left")
    batch = loaded(["1*2=", "13*24="], padding=True)["input_ids"]
    assert batch[0][:2] == [loaded.pad_token_id] * 2  # left padding for generation


def test_tiny_model_size_and_save_load(tmp_path):
    tokenizer = build_char_tokenizer(ArithmeticTask().alphabet())
    model = build_tiny_model(tokenizer)
    assert isinstance(model, LlamaForCausalLM)
    assert 2.4e6 < sum(p.numel() for p in model.parameters()) < 2.8e6
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.tensor([tokenizer("12*34=")["input_ids"]])
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id
