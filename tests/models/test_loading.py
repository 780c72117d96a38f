import pytest

from tbrm.models.loading import load_model_and_tokenizer


def test_loads_a_saved_directory_with_left_padding(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model.config.num_hidden_layers == 2


def test_missing_directory_and_bad_dtype_fail_clearly(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="model.dtype"):
        load_model_and_tokenizer(str(tiny_model_dir), dtype="float8")


def test_attention_checkpointing_and_bad_attention(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), attn_implementation="eager", gradient_checkpointing=True)
    assert model.config._attn_implementation == "eager" and model.is_gradient_checkpointing
    assert not model.config.use_cache  # generate() asks for the cache itself
    with pytest.raises(ValueError, match="model.attn_implementation"):
        load_model_and_tokenizer(str(tiny_model_dir), attn_implementation="fast")
