import json

import pytest
import torch

from tbrm.data.arithmetic import ArithmeticTask
from tbrm.models import warm_start as ws
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.models.policy import resolve_policy

ARCH = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_positions": 64}
SFT = {"steps": 3, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0, "seed": 0}
TASK_CFG = {"op": "mul", "a_digits": 2, "b_digits": 1, "num_val": 20, "num_test": 20}


def test_warm_start_is_cached_and_reused(tmp_path, monkeypatch):
    task = ArithmeticTask(**TASK_CFG)
    rng = torch.get_rng_state()
    path = ws.prepare_warm_start(task, TASK_CFG, ARCH, {**SFT, "eval_size": 10, "eval_samples": 2}, tmp_path)
    assert torch.equal(rng, torch.get_rng_state())  # a fresh warm start leaves the run's RNG alone
    report = json.loads((path / "warm_start.json").read_text())
    assert report["sft"]["steps"] == 3 and 0.0 <= report["eval"]["accuracy"] <= 1.0
    assert {"accuracy_sampled", "pass@1", "num_problems"} <= set(report["eval"])
    model, tokenizer = load_model_and_tokenizer(str(path))
    assert model.config.hidden_size == 32 and tokenizer.decode(tokenizer("12*3=")["input_ids"][1:]) == "12*3="
    assert not list(path.parent.glob(".tmp-*"))  # nothing half-written left behind

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached warm start should have been reused")

    monkeypatch.setattr(ws, "supervised_finetune", must_not_train)
    again = ws.prepare_warm_start(task, TASK_CFG, ARCH, {**SFT, "eval_size": 10, "eval_samples": 2}, tmp_path)
    assert again == path
    with pytest.raises(AssertionError, match="reused"):  # another SFT setting is another key
        ws.prepare_warm_start(task, TASK_CFG, ARCH, {**SFT, "steps": 4}, tmp_path)


def test_cache_key_depends_on_everything_that_shapes_the_weights():
    base = ws.cache_key(TASK_CFG, ARCH, SFT)
    assert base == ws.cache_key(dict(TASK_CFG), dict(ARCH), dict(SFT))
    assert base != ws.cache_key({**TASK_CFG, "b_digits": 2}, ARCH, SFT)
    assert base != ws.cache_key(TASK_CFG, {**ARCH, "hidden_size": 64}, SFT)
    assert base != ws.cache_key(TASK_CFG, ARCH, {**SFT, "seed": 1})


def test_sft_lowers_the_loss_and_masks_the_prompt():
    task = ArithmeticTask(**TASK_CFG)
    from tbrm.models.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(task.alphabet())
    batch = ws.sft_batch(tokenizer, task.splits()["train"][:2])
    prompt_len = len(tokenizer(task.splits()["train"][0]["prompt"])["input_ids"])
    assert (batch["labels"][0, :prompt_len] == -100).all() and (batch["labels"][0, prompt_len] != -100)
    model = build_tiny_model(tokenizer, **ARCH)
    losses = ws.supervised_finetune(
        model, tokenizer, task.splits()["train"], steps=40, batch_size=16, lr=3e-3, warmup_steps=2
    )
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_resolve_policy_prefers_a_named_model(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name_or_path": "org/some-model", "architecture": ARCH, "warm_start": SFT})
    assert resolve_policy(cfg, None, OmegaConf.create(TASK_CFG), str(tmp_path)) == "org/some-model"
    assert not list(tmp_path.iterdir())
