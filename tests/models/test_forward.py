import pytest
import torch

from tbrm.models.forward import completion_logprobs
from tbrm.models.loading import enable_gradient_checkpointing, load_model_and_tokenizer
from tbrm.rollout import generate_rollouts

PROMPTS = ["1*2=", "13*24=", "5+6=", "98*76="]  # different lengths: left padding is exercised
ANSWERS = ["2", "312", "11", "7448"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behavior_log_probs_match_a_forward_pass(model_and_tokenizer, temperature):
    """generate's processed scores and our forward (with position ids from the mask) agree."""
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(1)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=2, temperature=temperature, max_new_tokens=12)
    if temperature == 1.0:
        log_probs, value, _ = completion_logprobs(model, out)
    else:  # recompute the tempered distribution from the raw logits
        ids = torch.cat([out.prompt_ids, out.completion_ids], 1)
        mask = torch.cat([out.prompt_mask, out.completion_mask], 1)
        logits = model(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        p = out.prompt_ids.shape[1]
        logits = logits[:, p - 1 : p - 1 + out.completion_ids.shape[1]] / temperature
        log_probs = torch.log_softmax(logits, -1).gather(-1, out.completion_ids[..., None])[..., 0]
        log_probs = log_probs * out.completion_mask
    torch.testing.assert_close(log_probs, out.behavior_log_probs, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("engine", ["compact", "compiled"])
def test_rollout_stats_are_what_the_update_forward_computes(model_and_tokenizer, engine):
    """The log-probs (before top-p), entropies and V(s_1) a sampled rollout records equal
    ``completion_logprobs`` on the same tokens at the same temperature (rows dropped midway);
    greedy rollouts and ``engine=hf`` record none."""
    model, tokenizer = model_and_tokenizer
    if engine == "compiled":
        pytest.importorskip("torch._inductor")
    torch.manual_seed(2)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=3, temperature=0.7, top_p=0.9,
                            max_new_tokens=14, engine=engine)  # fmt: skip
    log_probs, value, entropy = completion_logprobs(model, out, with_entropy=True, temperature=0.7)
    stats = out.stats
    assert stats.temperature == 0.7 and stats.log_probs.shape == out.completion_ids.shape
    torch.testing.assert_close(stats.log_probs, log_probs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stats.entropy, entropy * out.completion_mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stats.initial_value, value, atol=1e-4, rtol=1e-4)
    assert torch.all(out.behavior_log_probs >= stats.log_probs - 1e-6)  # top-p renormalises: never below
    assert torch.any(out.behavior_log_probs > stats.log_probs + 1e-3)
    sub = out.select([4, 1])
    torch.testing.assert_close(sub.stats.entropy, stats.entropy[[4, 1], : sub.completion_ids.shape[1]])
    greedy = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, greedy=True, max_new_tokens=4)
    plain = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, max_new_tokens=4, engine="hf")
    assert greedy.stats is None and plain.stats is None


def test_top_p_is_applied_before_the_behaviour_log_probs_are_read(model_and_tokenizer):
    """With a nucleus of one token, sampling is greedy and every sampled token had probability 1;
    a model's own generation defaults (here top-k 1) never narrow the distribution further."""
    model, tokenizer = model_and_tokenizer
    greedy = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, greedy=True, max_new_tokens=8)
    torch.manual_seed(0)
    nucleus = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, top_p=1e-6, max_new_tokens=8)
    assert torch.equal(nucleus.completion_ids, greedy.completion_ids)
    assert torch.all(nucleus.behavior_log_probs == 0)
    model.generation_config.top_k = 1
    try:
        torch.manual_seed(0)
        wide = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=4, max_new_tokens=8)
    finally:
        model.generation_config.top_k = None
    assert torch.all(wide.behavior_log_probs[wide.completion_mask.bool()] < 0)  # not top-1: p < 1
    assert len(set(wide.completions)) > 1


def test_initial_value_is_logsumexp_at_last_prompt_position(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out = generate_rollouts(model, tokenizer, PROMPTS[:1], ANSWERS[:1], greedy=True, max_new_tokens=5)
    _, value, entropy = completion_logprobs(model, out, with_entropy=True)
    logits = model(torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])).logits[0, -1]
    assert value.item() == pytest.approx(torch.logsumexp(logits, -1).item(), rel=1e-5)
    probs = torch.softmax(logits, -1)
    assert entropy[0, 0].item() == pytest.approx(-(probs * probs.log()).sum().item(), rel=1e-4)


def test_log_probs_do_not_depend_on_batch_padding(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(2)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, max_new_tokens=12)
    full, value_full, _ = completion_logprobs(model, out)
    for i in range(len(out)):
        row = out.select(slice(i, i + 1))
        assert row.prompt_mask.all()  # select trims the left padding of a lone row
        alone, value_alone, _ = completion_logprobs(model, row)
        width = alone.shape[1]
        torch.testing.assert_close(alone[0], full[i, :width], atol=1e-4, rtol=1e-4)
        assert torch.all(full[i, width:] == 0)
        assert value_alone.item() == pytest.approx(value_full[i].item(), rel=1e-4)


def test_greedy_is_deterministic(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    a = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, greedy=True, max_new_tokens=8)
    b = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, greedy=True, max_new_tokens=8)
    assert a.completions == b.completions


def test_detached_entropy_in_chunks_equals_the_whole(model_and_tokenizer, monkeypatch):
    import tbrm.models.forward as hf

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(2)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, max_new_tokens=10)
    _, _, whole = completion_logprobs(model, out, with_entropy=True, entropy_grad=True)
    monkeypatch.setattr(hf, "ENTROPY_CHUNK", 3)
    with torch.no_grad():
        _, _, chunked = completion_logprobs(model, out, with_entropy=True, temperature=1.0)
    assert chunked.shape == whole.shape and not chunked.requires_grad
    torch.testing.assert_close(chunked, whole.detach(), atol=1e-5, rtol=1e-5)


def test_a_group_runs_its_prompt_once_with_the_same_values_and_gradients(model_and_tokenizer, monkeypatch):
    """Rows that share a prompt (GRPO's groups) run it once: the log-probs, V(s_1), entropies
    and parameter gradients equal those of running every row whole, for fewer positions through
    the model; every row runs whole without a repeated prompt, when sharing saves no more than
    a second forward call costs, and with gradient checkpointing."""
    import tbrm.models.forward as hf

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(4)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=3, temperature=0.8, max_new_tokens=12)
    positions = []
    hook = model.model.register_forward_pre_hook(lambda _, args, kw: positions.append(kw["input_ids"].numel()),
                                                 with_kwargs=True)  # fmt: skip

    def pass_and_grads():
        model.zero_grad(set_to_none=True)
        log_probs, value, entropy = completion_logprobs(model, out, with_entropy=True, entropy_grad=True,
                                                        temperature=0.8, share_cost_tokens=0)  # fmt: skip
        ((log_probs.sum() + entropy.sum()) * 0.1 + value.sum()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return (log_probs, value, entropy), grads, sum(positions)

    try:
        shared, shared_grads, shared_positions = pass_and_grads()
        positions.clear()
        monkeypatch.setattr(hf, "shared_prompt_logits", lambda *a: None)
        whole, whole_grads, whole_positions = pass_and_grads()
    finally:
        hook.remove()
    for a, b in zip(shared, whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == whole_grads.keys() and len(shared_grads) == len(list(model.parameters()))
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, whole_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    prompt_len, response_len = out.prompt_ids.shape[1], out.completion_ids.shape[1]
    assert whole_positions == 12 * (prompt_len + response_len)
    assert shared_positions == 4 * prompt_len + 12 * (response_len - 1)
    monkeypatch.undo()

    assert hf.shared_prompt_logits(model, out.select(list(range(0, 12, 3))), 0) is None  # four distinct prompts
    saved = 8 * out.prompt_ids.shape[1]  # 12 rows, 4 prompts
    assert hf.shared_prompt_logits(model, out, saved) is None  # saves no more than a second call costs
    assert hf.shared_prompt_logits(model, out, saved - 1) is not None
    enable_gradient_checkpointing(model)
    try:
        assert hf.shared_prompt_logits(model, out, 0) is None
    finally:
        model.activation_checkpointing_disable()
        model.config.use_cache = True
