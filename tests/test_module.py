"""The LightningModule on a tiny random model, for every objective: steps update the policy (and
the critic), never the reference; micro-batches accumulate to the full-batch gradient."""

import functools

import lightning as L
import pytest
import torch

from tbrm.data.arithmetic import ArithmeticTask
from tbrm.data.datamodule import PromptDataModule
from tbrm.module import RLModule
from tbrm.objectives import GRPO, PPO, TBRM
from tbrm.optim import adamw, warmup_cosine_schedule
from tbrm.rewards import exact_number_reward

ROLLOUT = {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}
GUARDS = ("invalid_reward", "nonfinite")
OPTIM = {
    "optimizer": functools.partial(adamw, lr=1e-2, betas=(0.9, 0.95)),
    "scheduler": functools.partial(warmup_cosine_schedule, warmup_steps=1),
}


class Recorder(L.Callback):
    def __init__(self):
        self.metrics = []

    def on_train_batch_end(self, trainer, *args):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(module, steps=2, datamodule=None, **trainer_kwargs):
    task = ArithmeticTask(b_digits=1, num_val=8, num_test=8)
    datamodule = datamodule or PromptDataModule(task, batch_size=4, val_batch_size=8)
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[recorder],
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer, recorder.metrics


def make(
    tiny_model_dir,
    reward=exact_number_reward,
    micro_batch_size=None,
    objective=None,
    model_options=None,
    replay=None,
    **batching,
):
    return RLModule(
        str(tiny_model_dir),
        objective or TBRM(beta=0.5),
        reward,
        rollout=ROLLOUT,
        **OPTIM,
        update={"micro_batch_size": micro_batch_size, **{k: v for k, v in batching.items() if k not in GUARDS}},
        model_options=model_options,
        replay=replay,
        **{k: v for k, v in batching.items() if k in GUARDS},
    )


def alternating_reward(completions, answers):
    """Half the completions rewarded: a random policy gets no exact answers, and with
    policy == reference and r = 0 everywhere the centered residual (and its gradient) is 0."""
    return [float(i % 2) for i in range(len(completions))]


def test_training_step_updates_policy_not_reference(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=alternating_reward)
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    ref_before = {k: v.clone() for k, v in module.ref_model.state_dict().items()}
    trainer, metrics = fit(module)
    assert trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in module.policy.state_dict().items())
    assert all(torch.equal(ref_before[k], v) for k, v in module.ref_model.state_dict().items())
    assert not any(k.startswith("ref") for k in module.state_dict())  # out of checkpoints
    expected = {
        "train/loss",
        "train/reward_mean",
        "train/accuracy",
        "train/kl_ref",
        "train/entropy",
        "train/response_length",
        "perf/rollout_s",
        "perf/ref_s",
        "perf/update_s",
        "perf/tokens_per_s",
        "perf/peak_mem_gb",
        "tbrm/residual_abs_mean",
        "tbrm/initial_value_mean",
        "tbrm/implied_reward_mean",
    }
    assert expected <= set(metrics[-1])
    assert metrics[-1]["train/completions"] == 2 * 4 * 2
    assert metrics[0]["train/kl_ref"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1


def random_reward(completions, answers):
    return [float(hash(c) % 2) for c in completions]


@pytest.mark.parametrize(
    "objective",
    [
        lambda: TBRM(beta=0.5),
        lambda: GRPO(group_size=2, beta=0.1, loss_agg_mode="token-mean"),
        lambda: GRPO(group_size=2, beta=0.0, loss_agg_mode="seq-mean-token-mean"),
        lambda: PPO(beta=0.1),
    ],
    ids=["tbrm", "grpo-token-mean", "grpo-seq-mean", "ppo"],
)
def test_micro_batches_accumulate_to_the_full_batch_gradient(tiny_model_dir, objective):
    """One micro-batch, at most 3 rows each, one per distinct length (split cost 0): same gradient."""
    grads = []
    for batching in ({"split_cost_tokens": 1e9}, {"micro_batch_size": 3}, {"split_cost_tokens": 0}):
        torch.manual_seed(0)
        module = make(tiny_model_dir, reward=alternating_reward, objective=objective(), **batching)
        captured = {}
        module.on_before_optimizer_step = lambda opt, captured=captured, m=module: captured.update(
            {n: p.grad.clone() for n, p in m.policy.named_parameters() if p.grad is not None}
        )
        fit(module, steps=1)
        grads.append(captured)
    assert grads[0].keys() == grads[1].keys() == grads[2].keys() and grads[0]
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for other in grads[1:]:
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], other[name], atol=1e-5, rtol=1e-4)


def test_bad_micro_batch_caps_and_engines_fail_when_the_module_is_built(tiny_model_dir):
    with pytest.raises(ValueError, match="micro_batch_tokens must be >= 1"):
        make(tiny_model_dir, micro_batch_tokens=0)
    with pytest.raises(ValueError, match="rollout.engine='sglang' is not one of"):
        RLModule(str(tiny_model_dir), TBRM(), exact_number_reward, rollout={**ROLLOUT, "engine": "sglang"}, **OPTIM)


@pytest.mark.parametrize("engine", ["compact", "hf"])
def test_both_rollout_engines_train(tiny_model_dir, engine):
    torch.manual_seed(0)
    module = RLModule(str(tiny_model_dir), GRPO(group_size=2), alternating_reward,
                      rollout={**ROLLOUT, "engine": engine}, **OPTIM)  # fmt: skip
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    trainer, metrics = fit(module, steps=1)
    assert trainer.global_step == 1 and metrics[0]["train/response_length"] > 0
    assert any(not torch.equal(before[k], v) for k, v in module.policy.state_dict().items())


class GroupsThenTies:
    """First call: groups of 2 with equal rewards (inert under GRPO) and mixed ones, alternating;
    later calls: one reward for everything, so every row is inert."""

    def __init__(self):
        self.calls = 0

    def __call__(self, completions, answers):
        self.calls += 1
        if self.calls > 1:
            return [1.0] * len(completions)
        return [[1.0, 1.0, 0.0, 1.0][i % 4] for i in range(len(completions))]


def test_grpo_skips_zero_advantage_rows_without_changing_the_update(tiny_model_dir):
    """Half the groups tie at step 1 and all of them at step 2: skipping their backward pass
    (and their forward: the rollout recorded their log-probs and entropies) leaves the parameters
    after both steps, and the logged metrics, as they are without skipping (AdamW's step on an
    all-zero gradient included)."""
    results = []
    for skip in (False, True):
        torch.manual_seed(0)
        objective = GRPO(group_size=2, beta=0.0, skip_zero_advantage=skip)
        module = make(tiny_model_dir, reward=GroupsThenTies(), objective=objective)
        initial = {k: v.clone() for k, v in module.policy.state_dict().items()}
        rows = []  # rows of each update forward (the rollout's prefill runs with a cache)
        module.policy.register_forward_pre_hook(
            lambda _, args, kw, rows=rows: None if kw.get("use_cache") else rows.append(len(kw["input_ids"])),
            with_kwargs=True,
        )
        _, metrics = fit(module, steps=2)
        # skipping: no forward for inert rows either (the rollout recorded their metrics' inputs)
        assert sum(rows) == (len(metrics) * 8 if not skip else 4)
        results.append(({k: v.clone() for k, v in module.policy.state_dict().items()}, metrics))
    (plain, plain_metrics), (skipped, metrics) = results
    assert "train/inert_frac" not in plain_metrics[0]
    assert [m["train/inert_frac"] for m in metrics] == [0.5, 1.0]
    for logged, reference in zip(metrics, plain_metrics, strict=True):  # metrics over every row, as before
        for key in ("train/loss", "train/entropy", "grpo/clip_frac", "grpo/ratio_mean", "grpo/pg_loss"):
            assert logged[key] == pytest.approx(reference[key], abs=1e-6)
    assert any(not torch.equal(initial[k], v) for k, v in skipped.items())  # the update did something
    for name, value in plain.items():
        torch.testing.assert_close(skipped[name], value, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradient_and_a_bf16_reference(tiny_model_dir):
    """The presets' loading options: checkpointed policy and critic (same gradients as without),
    float32 trained weights, the frozen reference in bf16."""
    grads = []
    for options in ({}, {"gradient_checkpointing": True, "inference_dtype": "bfloat16", "attn_implementation": "sdpa"}):
        torch.manual_seed(0)
        module = make(tiny_model_dir, reward=alternating_reward, objective=PPO(beta=0.1), model_options=options)
        checkpointing = bool(options)
        assert module.policy.is_gradient_checkpointing == checkpointing
        assert module.critic.backbone.is_gradient_checkpointing == checkpointing
        assert not module.ref_model.is_gradient_checkpointing
        assert module.ref_model.dtype == (torch.bfloat16 if checkpointing else torch.float32)
        assert module.policy.dtype == torch.float32 and module.policy.config._attn_implementation == "sdpa"
        captured = {}
        module.on_before_optimizer_step = lambda opt, captured=captured, m=module: captured.update(
            {n: p.grad.clone() for n, p in m.policy.named_parameters() if p.grad is not None}
        )
        fit(module, steps=1)
        grads.append(captured)
    assert grads[0].keys() == grads[1].keys() and any(g.abs().sum() > 0 for g in grads[0].values())
    # the same rollouts (same seed, same policy); only the reference's log-probs differ (bf16)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=2e-2, rtol=5e-2)


def test_grpo_steps_with_several_updates_count_one_global_step_each(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=random_reward, objective=GRPO(group_size=2, beta=0.0, epochs=2))
    assert module.ref_model is None  # beta = 0 loads no reference model
    calls = []
    opt_step = torch.optim.AdamW.step
    module.configure_optimizers = _counting(module.configure_optimizers, calls, opt_step)
    trainer, metrics = fit(module, steps=2)
    assert trainer.global_step == 2 and len(calls) == 4  # 2 RL steps x 2 iterations
    assert {"grpo/clip_frac", "grpo/ratio_mean", "grpo/frac_zero_std", "train/loss"} <= set(metrics[-1])
    assert "train/kl_ref" not in metrics[-1]


def _counting(configure, calls, opt_step):
    """Wrap configure_optimizers so every AdamW.step call on the module's optimizers is recorded."""

    def wrapped():
        out = configure()
        opts = [out["optimizer"]] if isinstance(out, dict) else out[0]
        for opt in opts:
            opt.step = lambda *a, _opt=opt, **k: (calls.append(_opt), opt_step(_opt, *a, **k))[1]
        return out

    return wrapped


def test_ppo_trains_policy_and_critic_and_checkpoints_the_critic(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=random_reward, objective=PPO(beta=0.1, epochs=2, num_minibatches=2))
    critic_before = {k: v.clone() for k, v in module.critic.state_dict().items()}
    policy_before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    trainer, metrics = fit(module, steps=2)
    assert trainer.global_step == 2  # 2 RL steps, although each made 4 policy and 4 critic steps
    assert any(not torch.equal(critic_before[k], v) for k, v in module.critic.state_dict().items())
    assert any(not torch.equal(policy_before[k], v) for k, v in module.policy.state_dict().items())
    assert any(k.startswith("critic.") for k in module.state_dict())
    assert not any(k.startswith("ref") for k in module.state_dict())
    expected = {"ppo/value_loss", "ppo/pg_loss", "ppo/clip_frac", "train/critic_grad_norm", "train/kl_ref"}
    assert expected <= set(metrics[-1])
    assert metrics[-1]["train/tokens"] > metrics[0]["train/tokens"] > 0
    assert metrics[-1]["perf/elapsed_s"] > metrics[0]["perf/elapsed_s"] > 0


@pytest.mark.parametrize(
    "objective", [lambda: PPO(beta=0.1), lambda: GRPO(group_size=2, beta=0.1)], ids=["ppo", "grpo"]
)
def test_first_update_ratio_to_the_behaviour_policy_is_one(tiny_model_dir, objective):
    """generate's behaviour log-probs and the training forward pass agree (left padding, positions)."""
    torch.manual_seed(0)
    _, metrics = fit(make(tiny_model_dir, reward=random_reward, objective=objective()), steps=1)
    key = "ppo/ratio_mean" if "ppo/ratio_mean" in metrics[0] else "grpo/ratio_mean"
    assert metrics[0][key] == pytest.approx(1.0, abs=1e-3)


def test_a_reward_function_that_raises_is_named(tiny_model_dir):
    def broken_verifier(completions, answers):
        raise KeyError("boom")

    with pytest.raises(RuntimeError, match="broken_verifier.*KeyError.*never raise"):
        fit(make(tiny_model_dir, reward=broken_verifier), steps=1)


def test_a_reward_function_with_the_wrong_length_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="returned 1 rewards for 8 completions"):
        fit(make(tiny_model_dir, reward=lambda c, a: [0.0]), steps=1)


def test_ppo_resumes_policy_critic_and_both_optimizers_from_a_checkpoint(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=random_reward, objective=PPO(beta=0.1))
    trainer, _ = fit(module, steps=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert len(saved["optimizer_states"]) == 2 and len(saved["lr_schedulers"]) == 2
    (state,) = saved["ranks"]  # one rank: one entry of per-rank state
    assert state["completions_seen"] == 8 and state["tokens_seen"] > 0

    resumed = make(tiny_model_dir, reward=random_reward, objective=PPO(beta=0.1))
    datamodule = PromptDataModule(ArithmeticTask(b_digits=1, num_val=8, num_test=8), batch_size=4, val_batch_size=8)
    trainer2 = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer2.fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "last.ckpt")
    assert trainer2.global_step == 2 and resumed.completions_seen == 16
    restored = make(tiny_model_dir, reward=random_reward, objective=PPO(beta=0.1))
    restored.load_state_dict(saved["state_dict"])
    for name, tensor in module.critic.state_dict().items():
        torch.testing.assert_close(restored.critic.state_dict()[name], tensor)


def test_track_kl_ref_loads_the_reference_at_beta_zero_and_logs_the_kl(tiny_model_dir):
    """GRPO at beta = 0 needs no reference; with track_kl_ref it still measures the KL to it."""
    grpo = GRPO(group_size=2, beta=0.0)
    assert make(tiny_model_dir, objective=grpo).ref_model is None
    torch.manual_seed(0)
    module = RLModule(
        str(tiny_model_dir),
        grpo,
        random_reward,
        rollout={**ROLLOUT, "n": 2},
        **OPTIM,
        track_kl_ref=True,
    )
    assert module.ref_model is not None
    _, metrics = fit(module, steps=3)
    assert "train/kl_ref" in metrics[-1] and metrics[0]["train/kl_ref"] == pytest.approx(0.0, abs=1e-5)
    assert metrics[-1]["train/kl_ref"] != 0.0  # the policy moved away from the reference
