"""rollout.engine=vllm on vLLM's CPU build (CI's second stage; skipped where vLLM is not installed):
the RolloutBatch contract, weights that really sync, the model loaded by hub name, and the errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from conftest import hub_model, save_tiny_model  # noqa: E402

from tbrm.models.forward import completion_logprobs  # noqa: E402
from tbrm.models.loading import load_model_and_tokenizer  # noqa: E402
from tbrm.rollout.engine import make_engine  # noqa: E402
from tbrm.rollout.hf import HFEngine  # noqa: E402
from tbrm.rollout.vllm_engine import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = ["12*34=", "5*6=", "78*9=", "3*45="]
ANSWERS = ["408", "30", "702", "135"]
OPTIONS = {"kv_cache_memory_bytes": 32 << 20}  # a few MiB of KV cache is plenty for these rows
#: |engine - trainer| log-prob on the same weights, float32 (measured: 2e-6 before a sync, 7e-6 after)
TOLERANCE = 1e-4
DIMS = {"hidden_size": 128, "num_heads": 2, "intermediate_size": 256}  # head size 64


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    """A random-init Llama with head size 64 (vLLM's CPU attention takes 32, 64, 80, ...) and the
    character tokenizer, written with save_pretrained."""
    return save_tiny_model(tmp_path_factory.mktemp("vllm_model"), **DIMS)


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    """One engine for the module (vLLM takes seconds to start); its policy trained by the tests."""
    policy, tokenizer = load_model_and_tokenizer(str(vllm_model_dir))
    return make_engine("vllm", policy, tokenizer, OPTIONS)


def recomputed(policy, batch, temperature=1.0):
    with torch.no_grad():
        return completion_logprobs(policy, batch, temperature=temperature)[0]


def max_diff(policy, batch, temperature=1.0):
    mask = batch.completion_mask.bool()
    return (recomputed(policy, batch, temperature) - batch.behavior_log_probs)[mask].abs().max().item()


def test_rollouts_have_the_contract_of_the_other_engines(engine):
    batch = engine.generate(PROMPTS, ANSWERS, n=3, temperature=0.8, max_new_tokens=24)
    tok = engine.tokenizer
    assert len(batch) == 12 and batch.prompts[:3] == [PROMPTS[0]] * 3 and batch.answers[3] == ANSWERS[1]
    assert batch.completion_ids.shape == batch.completion_mask.shape == batch.behavior_log_probs.shape
    assert batch.completion_ids.shape[1] <= 24 and batch.stats is None
    lengths = batch.completion_mask.sum(1)
    for i in range(len(batch)):
        n = int(lengths[i])
        ids = batch.completion_ids[i]
        assert (ids[n:] == tok.pad_token_id).all() and (batch.behavior_log_probs[i, n:] == 0).all()
        assert bool(batch.finished[i]) == (ids[n - 1].item() == tok.eos_token_id)  # vLLM's finish_reason "stop"
        assert not batch.finished[i] or (ids[: n - 1] != tok.eos_token_id).all()
    assert (batch.behavior_log_probs[batch.completion_mask.bool()] < 0).all()
    # the behaviour log-probs are those of the tempered distribution, as the trainer computes them
    assert max_diff(engine.model, batch, 0.8) < TOLERANCE
    assert max_diff(engine.model, batch, 1.0) > 10 * TOLERANCE  # the temperature is not ignored
    greedy = engine.generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=24)
    hf = HFEngine(engine.model, tok).generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=24)
    assert greedy.completions == hf.completions


def test_every_prompt_and_completion_draws_its_own_random_stream(engine):
    """The same prompt eight times in one call (and eight completions of one prompt) sample eight
    different completions: one seed for the whole call would make them all equal."""
    apart = engine.generate(["12*34="] * 8, ["408"] * 8, max_new_tokens=24)
    grouped = engine.generate(["12*34="], ["408"], n=8, max_new_tokens=24)
    assert len(set(apart.completions)) > 4 and len(set(grouped.completions)) > 4
    torch.manual_seed(5)
    first = engine.generate(PROMPTS, ANSWERS, n=2, max_new_tokens=24).completions
    torch.manual_seed(5)
    assert engine.generate(PROMPTS, ANSWERS, n=2, max_new_tokens=24).completions == first  # seeded by the run


def test_weights_sync_after_optimizer_steps(engine):
    """After k AdamW steps the engine's greedy completions are the trained policy's and its
    log-probs the trainer's; the same check on an engine that skipped the sync fails."""
    policy = engine.model
    before = engine.generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=24)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(3):  # push up the log-prob of sampled completions: the policy really moves
        batch = engine.generate(PROMPTS, ANSWERS, n=2, max_new_tokens=24)
        policy.train()
        log_probs = completion_logprobs(policy, batch)[0]
        (-(log_probs * batch.completion_mask).sum()).backward()
        opt.step()
        opt.zero_grad()
        engine.on_weights_updated()
    syncs = engine.syncs
    trained = HFEngine(policy, engine.tokenizer).generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=24)
    assert trained.completions != before.completions  # the update changed what the policy says
    greedy = engine.generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=24)
    assert engine.syncs == syncs + 1 and greedy.completions == trained.completions
    sampled = engine.generate(PROMPTS, ANSWERS, n=2, max_new_tokens=24)
    assert engine.syncs == syncs + 1  # no optimizer step since: no second sync
    assert max_diff(policy, sampled) < TOLERANCE
    # the control: one more step the engine is not told of, and the same check fails
    policy.train()
    (-(completion_logprobs(policy, sampled)[0] * sampled.completion_mask).sum()).backward()
    opt.step()
    opt.zero_grad()
    stale = engine.generate(PROMPTS, ANSWERS, n=2, max_new_tokens=24)
    assert max_diff(policy, stale) > 100 * TOLERANCE
    engine.on_weights_updated()
    assert max_diff(policy, engine.generate(PROMPTS, ANSWERS, n=2, max_new_tokens=24)) < TOLERANCE


def test_a_model_the_cpu_build_cannot_serve_fails_before_any_work(tiny_model_dir):
    policy, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))  # head size 16
    with pytest.raises(ValueError, match=r"head sizes .* this model's is 16.*rollout.engine=auto"):
        VLLMEngine(policy, tokenizer, OPTIONS)
    policy.config.architectures = ["NoSuchForCausalLM"]
    with pytest.raises(ValueError, match=r"cannot serve \['NoSuchForCausalLM'\].*rollout.engine=auto"):
        VLLMEngine(policy, tokenizer, OPTIONS)


def test_sleep_mode_is_refused_on_the_cpu(vllm_model_dir):
    policy, tokenizer = load_model_and_tokenizer(str(vllm_model_dir))
    with pytest.raises(ValueError, match="sleep_mode needs a CUDA device"):
        VLLMEngine(policy, tokenizer, {**OPTIONS, "sleep_mode": True})


class Recording:
    """The engine's ``vllm.LLM`` with its calls recorded, and sleep / wake-up only recorded (vLLM's
    CPU build has no sleep mode)."""

    def __init__(self, llm):
        self.llm, self.calls = llm, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.llm, name)

    def sleep(self, level):
        self.calls.append(f"sleep({level})")

    def wake_up(self):
        self.calls.append("wake_up")


def test_sleep_mode_frees_the_engine_after_a_rollout_and_wakes_and_reloads_before_the_next(engine):
    engine.generate(PROMPTS, ANSWERS, max_new_tokens=4)  # built, in sync
    real, engine.llm = engine.llm, Recording(engine.llm)
    engine.options["sleep_mode"] = True
    try:
        engine.generate(PROMPTS, ANSWERS, max_new_tokens=4)
        assert engine.llm.calls == ["generate", "sleep(2)"] and engine.asleep and engine.stale
        engine.llm.calls.clear()
        engine.generate(PROMPTS, ANSWERS, max_new_tokens=4)
        # woken, then its weights loaded from the policy (level 2 dropped them), then sampled
        assert engine.llm.calls == ["wake_up", "apply_model", "reset_prefix_cache", "generate", "sleep(2)"]
    finally:
        engine.llm, engine.options["sleep_mode"], engine.asleep = real, False, False
        engine.on_weights_updated()


def test_a_model_by_hub_name_from_the_cache(vllm_model_dir, tmp_path, monkeypatch):
    """model.name_or_path=<org>/<name>: the policy and the engine resolve it in the HF cache offline.
    Last in the file: after a second engine in the process, the module's engine failed here
    ("pipeline model parallel group is not initialized": vLLM's parallel state is process-wide)."""
    import huggingface_hub

    cache = tmp_path / "hub"
    hub_model(cache, "acme/tiny-llama", vllm_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    policy, tokenizer = load_model_and_tokenizer("acme/tiny-llama")
    engine = VLLMEngine(policy, tokenizer, OPTIONS)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    engine.build()  # vLLM reseeds the process's generators while it starts; the engine puts them back
    assert torch.equal(torch.rand(4), expected)
    greedy = engine.generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=16)
    hf = HFEngine(policy, tokenizer).generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=16)
    assert greedy.completions == hf.completions and engine.llm is not None
