"""The compact decode loop against HF generate and the model's forward: same draws from the same
seed, the same greedy outputs with finished rows dropped, the lean step equal to forward on every
covered architecture (and, compiled, equal to itself eager), and a plain forward for the others."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tbrm.models.loading import load_model_and_tokenizer
from tbrm.rollout import generate_rollouts
from tbrm.rollout.decode import PreallocatedLayer, decode, preallocated_cache, sample_tokens
from tbrm.rollout.lean_step import LeanStep

PROMPTS = ["1*2=", "13*24=", "5+6=", "98*76="]  # different lengths: left padding is exercised
ANSWERS = ["2", "312", "11", "7448"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    return model.eval(), tokenizer


def prompts(tokenizer, n=1):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)


def same_completions(tokens, hf) -> bool:
    """The loop's tokens equal generate's up to each completion's end (generate pads differently)."""
    width, keep = hf.completion_ids.shape[1], hf.completion_mask == 0
    return torch.equal(tokens[:, :width].masked_fill(keep, 0), hf.completion_ids.masked_fill(keep, 0))


def run(model, tokenizer, ids, mask, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("max_new_tokens", 16)
    return decode(model, ids, mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kw)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_without_compaction_the_loop_draws_what_generate_draws(model_and_tokenizer, temperature, top_p):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(3)
    hf = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=3, temperature=temperature, top_p=top_p,
                           max_new_tokens=16, engine="hf")  # fmt: skip
    ids, mask = prompts(tokenizer, 3)
    tokens, log_probs = run(model, tokenizer, ids, mask, seed=3, temperature=temperature, top_p=top_p,
                            compact_fraction=None)  # fmt: skip
    assert same_completions(tokens, hf)
    compact = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=3, temperature=temperature, top_p=top_p,
                                max_new_tokens=16)  # fmt: skip
    assert compact.completion_ids.shape[1] <= 16
    torch.testing.assert_close(log_probs[:, : hf.behavior_log_probs.shape[1]] * hf.completion_mask,
                               hf.behavior_log_probs, atol=1e-5, rtol=1e-5)  # fmt: skip


def test_finished_rows_leave_the_batch_without_changing_greedy_outputs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids, mask = prompts(tokenizer)
    full = run(model, tokenizer, ids, mask, greedy=True, compact_fraction=None, max_new_tokens=40)
    for fraction in (0.01, 0.5):
        dropped = run(model, tokenizer, ids, mask, greedy=True, compact_fraction=fraction, max_new_tokens=40)
        assert torch.equal(dropped[0], full[0])
        torch.testing.assert_close(dropped[1], full[1])
    hf = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, greedy=True, max_new_tokens=40, engine="hf")
    assert same_completions(full[0], hf)


def test_rows_stop_at_eos_and_are_padded_after_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids, mask = prompts(tokenizer, 4)
    tokens, log_probs = run(model, tokenizer, ids, mask, max_new_tokens=30)
    eos = tokens == tokenizer.eos_token_id
    after = (eos.long().cumsum(1) - eos.long()) > 0
    assert after.any(), "a random model emits EOS within 30 tokens for some of 16 rows"
    assert torch.all(tokens[after] == tokenizer.pad_token_id) and torch.all(log_probs[after] == 0)
    assert torch.all(log_probs[~after] <= 0)


def test_sample_tokens_top_p_keeps_the_nucleus_and_reports_its_log_probs():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    torch.manual_seed(0)
    tokens, log_probs = sample_tokens(logits, top_p=0.7)
    assert set(tokens.tolist()) == {0, 1}  # p = 0.64, 0.24: the nucleus of 0.7 is the top two
    kept = torch.log_softmax(torch.tensor([2.0, 1.0]), -1)
    torch.testing.assert_close(log_probs, kept[tokens])
    greedy, greedy_lp = sample_tokens(logits[:1], greedy=True)
    assert greedy.tolist() == [0] and greedy_lp.item() == pytest.approx(torch.log_softmax(logits[0], -1)[0].item())


def test_preallocated_layer_writes_in_place_and_selects_rows():
    layer = PreallocatedLayer(capacity=5)
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    keys, _ = layer.update(k, v)
    assert keys.shape == (3, 2, 4, 8) and layer.get_seq_length() == 4 and layer.key_buffer.shape[2] == 5
    layer.batch_select_indices(torch.tensor([2, 0]))
    torch.testing.assert_close(layer.keys, k[[2, 0]])
    keys, values = layer.update(torch.ones(2, 2, 1, 8), torch.ones(2, 2, 1, 8))
    assert keys.shape == (2, 2, 5, 8) and torch.all(values[:, :, 4] == 1)
    with pytest.raises(RuntimeError, match="holds 5 positions"):
        layer.update(torch.ones(2, 2, 1, 8), torch.ones(2, 2, 1, 8))


@pytest.mark.parametrize("lean", [True, False])
def test_a_group_shares_its_prompt_prefill(model_and_tokenizer, lean):
    """``group=n``: the prefill runs on one copy of each prompt and is copied to its n rows; the
    outputs are those of prefilling every row (greedy: the same tokens; sampled: the same draws
    from the same seed, log-probs equal up to rounding)."""
    model, tokenizer = model_and_tokenizer
    ids, mask = prompts(tokenizer, 3)
    for kw in ({"greedy": True}, {"temperature": 0.9}):
        shared = run(model, tokenizer, ids, mask, group=3, lean=lean, with_stats=True, **kw)
        each = run(model, tokenizer, ids, mask, group=1, lean=lean, with_stats=True, **kw)
        assert torch.equal(shared[0], each[0])
        torch.testing.assert_close(shared[1], each[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared[2].initial_value, each[2].initial_value, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="12 rows do not come in groups of 5"):
        run(model, tokenizer, ids, mask, group=5)


def test_preallocated_layer_repeats_rows_for_a_group():
    layer = PreallocatedLayer(capacity=6)
    k = torch.randn(2, 1, 3, 4)
    layer.update(k, k + 1)
    layer.batch_repeat_interleave(3)
    assert layer.key_buffer.shape == (6, 1, 6, 4) and layer.get_seq_length() == 3
    torch.testing.assert_close(layer.keys, k.repeat_interleave(3, 0))
    torch.testing.assert_close(layer.values, (k + 1).repeat_interleave(3, 0))


ARCHITECTURES = {
    "llama-gqa": (LlamaForCausalLM, LlamaConfig, {"num_key_value_heads": 2}),
    "qwen2-bias": (Qwen2ForCausalLM, Qwen2Config, {"num_key_value_heads": 2}),
    "qwen3-qk-norm": (Qwen3ForCausalLM, Qwen3Config, {"num_key_value_heads": 1, "head_dim": 24}),
}


def small(cls, config_cls, extra, vocab):
    torch.manual_seed(0)
    config = config_cls(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, **extra)  # fmt: skip
    return cls(config).eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_lean_step_equals_the_forward_of_each_covered_architecture(model_and_tokenizer, arch):
    _, tokenizer = model_and_tokenizer
    model = small(*ARCHITECTURES[arch], vocab=len(tokenizer))
    if arch == "qwen2-bias":  # Qwen2's q/k/v biases are zero at init: make them count
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
            torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    assert LeanStep.for_model(model, preallocated_cache(model, 8)) is not None
    ids, mask = prompts(tokenizer, 2)
    for kw in ({"greedy": True}, {"temperature": 0.8}):
        lean = run(model, tokenizer, ids, mask, lean=True, **kw)
        plain = run(model, tokenizer, ids, mask, lean=False, **kw)
        assert torch.equal(lean[0], plain[0])
        torch.testing.assert_close(lean[1], plain[1], atol=1e-5, rtol=1e-5)


def test_other_models_decode_through_their_forward(model_and_tokenizer):
    """GPT-2 (learned positions, no rotary) and a Llama whose projection is wrapped (as an adapter
    would) get no lean step; the loop still matches generate through the model's forward."""
    model, tokenizer = model_and_tokenizer
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    assert LeanStep.for_model(gpt2, preallocated_cache(gpt2, 8)) is None
    torch.manual_seed(1)
    hf = generate_rollouts(gpt2, tokenizer, PROMPTS, ANSWERS, n=2, max_new_tokens=10, engine="hf")
    ids, mask = prompts(tokenizer, 2)
    tokens, _ = run(gpt2, tokenizer, ids, mask, seed=1, max_new_tokens=10, compact_fraction=None)
    assert same_completions(tokens, hf)

    class Wrapped(torch.nn.Linear):
        pass

    wrapped = small(LlamaForCausalLM, LlamaConfig, {}, len(tokenizer))
    proj = wrapped.model.layers[0].self_attn.q_proj
    wrapped.model.layers[0].self_attn.q_proj = Wrapped(proj.in_features, proj.out_features, bias=False)
    assert LeanStep.for_model(wrapped, preallocated_cache(wrapped, 8)) is None


@pytest.mark.slow
def test_compiled_step_draws_what_the_eager_step_draws_and_compiles_once(model_and_tokenizer, tmp_path, monkeypatch):
    """rollout.engine=compiled: the same tokens and log-probs as the eager lean step (GQA and
    q/k/v biases exercised), with finished rows dropped, from one package compiled ahead of time
    for every batch size, cache length and capacity, and loaded (not rebuilt) by a new process."""
    import subprocess

    from tbrm.rollout import lean_step

    _, tokenizer = model_and_tokenizer
    model = small(*ARCHITECTURES["qwen2-bias"], vocab=len(tokenizer))
    for layer in model.model.layers:
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    monkeypatch.setenv("TBRM_CACHE_DIR", str(tmp_path))
    lean_step.compiled_step.cache_clear()
    builds = []  # our compilations in a child process (inductor runs commands of its own)
    real_run = subprocess.run

    def counted(cmd, *args, **kwargs):
        builds.extend(["built"] if "tbrm.rollout.aot" in cmd else [])
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counted)
    for n, kw in ((2, {"greedy": True}), (3, {"temperature": 0.8, "compact_fraction": 0.01})):
        ids, mask = prompts(tokenizer, n)
        eager = run(model, tokenizer, ids, mask, **kw)
        compiled = run(model, tokenizer, ids, mask, compiled=True, **kw)
        assert torch.equal(compiled[0], eager[0])
        torch.testing.assert_close(compiled[1], eager[1], atol=1e-5, rtol=1e-5)
    ids, mask = prompts(tokenizer, 1)
    kw = {"max_new_tokens": 24, "greedy": True}
    other = run(model, tokenizer, ids[1:], mask[1:], compiled=True, **kw)  # other rows, lengths, capacity
    assert torch.equal(other[0], run(model, tokenizer, ids[1:], mask[1:], **kw)[0])
    assert len(builds) == 1 and len(list((tmp_path / "aoti").glob("*.pt2"))) == 1
    lean_step.compiled_step.cache_clear()  # a new process: loads the package, compiles nothing
    run(model, tokenizer, ids, mask, compiled=True, greedy=True)
    assert len(builds) == 1


def test_a_failed_ahead_of_time_compilation_names_the_fallback(model_and_tokenizer, tmp_path, monkeypatch):
    import subprocess

    from tbrm.rollout import aot, lean_step

    model, tokenizer = model_and_tokenizer
    monkeypatch.setenv("TBRM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(aot, "_FAILED", {})
    lean_step.compiled_step.cache_clear()
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="g++: command not found")
    attempts = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: attempts.append(1) or failed)
    for _ in range(2):  # the second rollout is refused at once: no second compilation
        with pytest.raises(RuntimeError, match="(?s)use rollout.engine=compact.*g\\+\\+: command not found"):
            generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, engine="compiled")
    lean_step.compiled_step.cache_clear()
    assert len(attempts) == 1 and not list(tmp_path.glob("aoti/*.pt2"))


def test_auto_engine_compiles_where_it_can_and_runs_eagerly_otherwise(model_and_tokenizer, monkeypatch, caplog):
    """rollout.engine=auto: the compiled step on CPU where a C++ compiler is found (a stand-in
    for the package here: the exported function itself; the package is tested above); the eager
    lean step without a compiler, for a bfloat16 model or under autocast, or with one warning
    when the compilation fails; the model's forward for a model the lean step does not cover. The same tokens."""
    import json

    from tbrm.rollout import lean_step

    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(lean_step, "_WARNED", [])
    loaded = []

    def package(spec_json):
        loaded.append(spec_json)
        options = {key: json.loads(spec_json)[key] for key in ("heads", "kv_heads", "scaling")}
        return lambda params, tokens, positions, keys, values, bias, length: lean_step.step(
            params, tokens, positions, keys, values, bias, length.shape[0], **options
        )

    def sample(engine):
        torch.manual_seed(0)
        return generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=2, max_new_tokens=12, engine=engine)

    compact = sample("compact")
    monkeypatch.setattr(lean_step, "compiled_step", package)
    monkeypatch.setattr(lean_step, "compiler_found", lambda: True)
    auto = sample("auto")
    assert len(loaded) == 1
    assert torch.equal(auto.completion_ids, compact.completion_ids)
    torch.testing.assert_close(auto.behavior_log_probs, compact.behavior_log_probs, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(lean_step, "compiler_found", lambda: False)
    assert torch.equal(sample("auto").completion_ids, compact.completion_ids) and len(loaded) == 1
    monkeypatch.setattr(lean_step, "compiler_found", lambda: True)
    half = small(*ARCHITECTURES["llama-gqa"], vocab=len(tokenizer)).to(torch.bfloat16)
    generate_rollouts(half, tokenizer, PROMPTS, ANSWERS, max_new_tokens=6, engine="auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, max_new_tokens=6, engine="auto")
    assert len(loaded) == 1  # bfloat16 weights or autocast: the eager step

    def fails(spec_json):
        raise RuntimeError("rollout.engine=compiled could not compile the decode step: g++: command not found")

    monkeypatch.setattr(lean_step, "compiler_found", lambda: True)
    monkeypatch.setattr(lean_step, "compiled_step", fails)
    with caplog.at_level("WARNING", logger="tbrm.rollout.lean_step"):
        for _ in range(2):
            assert torch.equal(sample("auto").completion_ids, compact.completion_ids)
    warned = [r for r in caplog.records if "rollout.engine=auto runs the decode step eagerly" in r.getMessage()]
    assert len(warned) == 1 and "g++: command not found" in warned[0].getMessage()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    out = generate_rollouts(gpt2.eval(), tokenizer, PROMPTS, ANSWERS, max_new_tokens=6, engine="auto")
    assert out.completion_ids.shape[0] == len(PROMPTS)


def test_compiled_engine_refuses_a_model_it_does_not_cover(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    with pytest.raises(ValueError, match="this gpt2 model is not covered: use rollout.engine=compact"):
        generate_rollouts(gpt2.eval(), tokenizer, PROMPTS, ANSWERS, engine="compiled")
    half = small(*ARCHITECTURES["llama-gqa"], vocab=len(tokenizer)).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 models without autocast, not a torch.bfloat16 model"):
        generate_rollouts(half, tokenizer, PROMPTS, ANSWERS, engine="compiled")
    model, _ = model_and_tokenizer
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="not under autocast"):
        generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, engine="compiled")


def test_unknown_engine_is_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="rollout.engine='sglang' is not one of"):
        generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, engine="sglang")


def test_processes_compiling_the_same_step_take_turns(tmp_path):
    """The compilation lock (``_exclusive``) admits one process at a time: what two processes
    write inside it never interleaves."""
    import subprocess
    import sys

    record = tmp_path / "record.txt"
    code = (
        "import os, time, pathlib\n"
        "from tbrm.rollout.aot import _exclusive\n"
        f"with _exclusive(pathlib.Path({str(tmp_path / 'step.lock')!r})):\n"
        f"    with open({str(record)!r}, 'a') as f: f.write(f'in {{os.getpid()}}\\n')\n"
        "    time.sleep(0.5)\n"
        f"    with open({str(record)!r}, 'a') as f: f.write(f'out {{os.getpid()}}\\n')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    lines = record.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert [kind for kind, _ in events] == ["in", "out", "in", "out"]
    assert events[0][1] == events[1][1] and events[2][1] == events[3][1] != events[0][1]
