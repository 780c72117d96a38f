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


def test_hub_names_resolve_through_the_hugging_face_cache(tiny_model_dir, tmp_path, monkeypatch):
    """What from_pretrained does with a hub name: the cached snapshot, offline; a name missing from the
    cache fails at once, naming the cache and HF_HUB_OFFLINE, instead of half a minute of retries."""
    import time

    import huggingface_hub
    from conftest import hub_model

    from tbrm.models.loading import check_source

    hub_model(tmp_path / "hub", "acme/tiny-arith", tiny_model_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model, tokenizer = load_model_and_tokenizer("acme/tiny-arith")
    assert model.config.num_hidden_layers == 2 and tokenizer("1*2=")["input_ids"]
    began = time.time()
    with pytest.raises(FileNotFoundError, match=r"'acme/missing' is not in the Hugging Face cache .* HF_HUB_OFFLINE=1"):
        check_source("acme/missing")
    assert time.time() - began < 2
    with pytest.raises(FileNotFoundError, match="model directory 'acme/a/b' does not exist"):
        check_source("acme/a/b")
    with pytest.raises(ValueError, match="is neither a directory nor a hub name"):
        check_source("bad name!")


def test_a_hub_name_neither_cached_nor_reachable_fails_fast(tmp_path, monkeypatch):
    import time

    import huggingface_hub

    from tbrm.models.loading import check_source

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    began = time.time()
    # no network here: the hub cannot be reached; with network, the hub answers that it has no such model
    with pytest.raises((ConnectionError, FileNotFoundError), match="the hub cannot be reached|the hub has no such"):
        check_source("acme-no-such-org/no-such-model")
    assert time.time() - began < 15
