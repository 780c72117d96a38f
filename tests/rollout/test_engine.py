"""Rollout engines behind one interface: the registry, a new engine in one class, the hook."""

import pytest
import torch

from tbrm.models.loading import load_model_and_tokenizer
from tbrm.rollout import ENGINES, RolloutEngine, generate_rollouts, make_engine
from tbrm.rollout.engine import engine_class

PROMPTS = ["1*2=", "13*24="]
#: the engines sampling from the live weights (vLLM's: tests/rollout/test_vllm_engine.py)
LOCAL = [name for name in ENGINES if name != "vllm"]
ANSWERS = ["2", "312"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def test_every_registered_engine_is_a_rollout_engine_that_samples_the_same_greedy_completions(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    outs = {}
    for name in LOCAL:
        cls = engine_class(name)
        assert issubclass(cls, RolloutEngine)
        outs[name] = make_engine(name, model, tokenizer).generate(PROMPTS, ANSWERS, greedy=True, max_new_tokens=8)
    assert set(outs) == {"auto", "compact", "compiled", "hf"}
    for out in outs.values():
        assert out.completions == outs["hf"].completions and len(out) == 2
    for training in (True, False):  # each engine samples in eval mode and restores the mode it found
        model.train(training)
        for name in LOCAL:
            make_engine(name, model, tokenizer).generate(PROMPTS, ANSWERS, max_new_tokens=4)
            assert model.training is training


def test_an_unknown_engine_names_the_choices():
    with pytest.raises(
        ValueError, match=r"rollout.engine='sglang' is not one of \('auto', 'compact', 'compiled', 'hf', 'vllm'\)"
    ):
        engine_class("sglang")


class Constant(RolloutEngine):
    """A new engine in one class: always completes with the tokens of ``#### 2``, and counts the
    optimizer steps it was told about."""

    steps = 0

    def sample(self, enc, prompt_ids, prompt_mask, n, temperature, top_p, max_new_tokens, greedy):
        ids = self.tokenizer("#### 2", add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        completion = torch.tensor([ids] * len(prompt_ids), device=prompt_ids.device)
        return completion, torch.full(completion.shape, -0.5), None

    def on_weights_updated(self):
        type(self).steps += 1


def test_a_registered_engine_serves_training_and_hears_of_every_optimizer_step(tiny_model_dir, monkeypatch):
    import lightning as L

    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.data.datamodule import PromptDataModule
    from tbrm.module import RLModule
    from tbrm.objectives import TBRM
    from tbrm.rewards import exact_number_reward

    monkeypatch.setitem(ENGINES, "constant", f"{__name__}:Constant")
    out = generate_rollouts(*load_model_and_tokenizer(str(tiny_model_dir)), PROMPTS, ANSWERS, n=2, engine="constant")
    assert out.completions == ["#### 2"] * 4 and out.completion_mask.sum(1).tolist() == [7] * 4
    rollout = {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "engine": "constant"}
    module = RLModule(str(tiny_model_dir), TBRM(beta=0.5), exact_number_reward, rollout=rollout)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    Constant.steps = 0
    task = ArithmeticTask(b_digits=1, num_val=8, num_test=8)
    trainer.fit(module, datamodule=PromptDataModule(task, batch_size=4, val_batch_size=8))
    assert Constant.steps == 3 and module.generated == 12
    assert trainer.callback_metrics["train/response_length"] == 7  # the engine's completions were trained on


def test_auto_is_vllm_on_a_cuda_device_with_vllm_installed_and_our_loop_otherwise(monkeypatch, caplog):
    import logging

    from tbrm.rollout import engine
    from tbrm.rollout.engine import resolve_engine

    caplog.set_level(logging.INFO, logger="tbrm.rollout.engine")
    monkeypatch.setattr(engine, "vllm_installed", lambda: True)
    assert resolve_engine("auto", cuda=True) == "vllm" and "vllm (a CUDA device and vLLM are here)" in caplog.text
    assert resolve_engine("auto", cuda=False) == "auto" and "no CUDA device" in caplog.text
    assert resolve_engine("hf", cuda=True) == "hf"  # a named engine is the one asked for
    monkeypatch.setattr(engine, "vllm_installed", lambda: False)
    assert resolve_engine("auto", cuda=True) == "auto" and "vLLM is not installed" in caplog.text


def test_the_vllm_engine_without_vllm_names_the_install(model_and_tokenizer):
    from tbrm.rollout.engine import vllm_installed

    if vllm_installed():
        pytest.skip("vLLM is installed here (tests/rollout/test_vllm_engine.py runs it)")
    with pytest.raises(ImportError, match=r"rollout.engine=vllm needs vLLM, which is not installed: pip install -e"):
        make_engine("vllm", *model_and_tokenizer)
