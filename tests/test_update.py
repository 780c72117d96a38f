"""The update loop without Lightning: micro-batches add up to the whole minibatch for every term
and every aggregation (PPO's value loss included), inert rows are a filter on the plan, and the
optimizer steps are those the objective asks for."""

import copy

import pytest
import torch

from tbrm.models.critic import ValueModel
from tbrm.models.forward import completion_logprobs
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.objectives import GRPO, PPO, TBRM
from tbrm.objectives.common import LOSS_AGG_MODES, masked_mean
from tbrm.rollout import generate_rollouts
from tbrm.update import Update

PROMPTS = ["1*2=", "13*24=", "5+6=", "98*76=", "7*8=", "12+34=", "3*3=", "45*67="]


class Recorder:
    """An optimizer that keeps the gradients it is asked to step with and changes nothing."""

    def __init__(self, params):
        self.params, self.grads = list(params), []
        self.param_groups = [{"params": self.params}]  # what the update clips and steps, as torch.optim's

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([None if p.grad is None else p.grad.clone() for p in self.params])


@pytest.fixture(scope="module")
def setting(tiny_model_dir):
    policy, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    critic = ValueModel.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(0)
    rollout = generate_rollouts(policy, tokenizer, PROMPTS, ["1"] * 8, max_new_tokens=12)
    assert len(set(rollout.completion_mask.sum(1).tolist())) > 2  # rows of uneven length
    return policy, critic, rollout, torch.tensor([float(i % 2) for i in range(8)])


def run(objective, policy, critic, rollout, rewards, batching, reference=None, **kwargs):
    policy, critic = copy.deepcopy(policy), None if critic is None else copy.deepcopy(critic)
    update = Update(objective, policy, critic, forward=completion_logprobs, batching=batching, grad_clip=1e9)
    exp = update.experience(rollout, rewards, reference)
    update.critic_pass(rollout, exp)
    objective.prepare(exp)
    opts = [Recorder(m.parameters()) for m in (policy, critic) if m is not None]
    metrics = update.run(rollout, exp, opts, **kwargs)
    return metrics, opts, exp


WHOLE, UNEVEN = {"split_cost_tokens": 1e9}, {"max_rows": 3, "split_cost_tokens": 0}


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_ppo_value_loss_and_critic_gradient_do_not_depend_on_the_split(setting, mode):
    policy, critic, rollout, rewards = setting
    results = []
    for batching in (WHOLE, UNEVEN):
        objective = PPO(beta=0.0, loss_agg_mode=mode, norm_length=12, entropy_coef=0.01)
        results.append(run(objective, policy, critic, rollout, rewards, batching))
    (whole, whole_opts, exp), (split, split_opts, _) = results
    mask = rollout.completion_mask
    with torch.no_grad():
        values = exp["old_values"]  # the critic has not moved: its values are the old ones
        expected = 0.5 * masked_mean((values - exp["returns"]).pow(2), mask)  # the whole batch's token mean
    assert whole["ppo/value_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert split["ppo/value_loss"] == pytest.approx(whole["ppo/value_loss"], rel=1e-5)
    assert split["train/loss"] == pytest.approx(whole["train/loss"], rel=1e-5)
    for model in (0, 1):  # the policy's gradient and the critic's
        for a, b in zip(whole_opts[model].grads[0], split_opts[model].grads[0], strict=True):
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_inert_rows_are_planned_apart_without_a_backward_and_step_adamw_with_a_zero_gradient(setting):
    policy, _, rollout, _ = setting
    update = Update(GRPO(group_size=2, beta=0.0), policy, forward=completion_logprobs, batching=UNEVEN)
    inert = [True, True, False, False, True, True, False, False]
    plan = update.plan(rollout, list(range(8)), inert)
    assert sorted(r for rows, _ in plan for r in rows) == list(range(8))
    assert all(not inert[r] for rows, grad in plan if grad for r in rows)
    assert all(inert[r] for rows, grad in plan if not grad for r in rows)
    assert [grad for _, grad in plan] == sorted((grad for _, grad in plan), reverse=True)  # active ones first
    tied = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # every group tied: every row inert
    metrics, opts, _ = run(GRPO(group_size=2, beta=0.0), policy, None, rollout, tied, UNEVEN)
    assert metrics["train/inert_frac"] == 1.0
    assert len(opts[0].grads) == 1 and all(g is not None and g.abs().sum() == 0 for g in opts[0].grads[0])


def test_steps_per_rollout_and_the_counted_step(setting):
    policy, critic, rollout, rewards = setting
    counted = []
    metrics, opts, _ = run(PPO(beta=0.0, epochs=2, num_minibatches=2), policy, critic, rollout, rewards, WHOLE,
                           counted_step=lambda: counted.append(1))  # fmt: skip
    # 4 optimizer steps each; the policy's last goes through the counted step (Lightning's)
    assert len(opts[0].grads) == 3 and len(opts[1].grads) == 4 and counted == [1]
    metrics, opts, _ = run(TBRM(beta=0.5), policy, None, rollout, rewards, UNEVEN, reference=policy)
    assert len(opts[0].grads) == 1 and {"train/loss", "train/grad_norm", "tbrm/residual_abs_mean"} <= set(metrics)


def shifted(rollout, shift: torch.Tensor):
    """The rollout with its behaviour log-probs moved by ``shift`` (rows,) on completion tokens:
    an engine whose log-probs differ from the trainer's by a known amount."""
    out = copy.copy(rollout)
    out.behavior_log_probs = rollout.behavior_log_probs + shift[:, None] * rollout.completion_mask
    out.stats = None
    return out


def make(objective, policy, **kwargs):
    return Update(objective, copy.deepcopy(policy), forward=completion_logprobs, batching=UNEVEN, **kwargs)


def test_logprob_abs_diff_measures_the_fresh_rows_against_the_trainer_at_no_extra_pass(setting):
    policy, _, rollout, rewards = setting
    shift = torch.tensor([0.25] * 4 + [1.0] * 4)  # rows 4..7 stand for replayed trajectories
    for objective in (TBRM(beta=0.5), GRPO(group_size=2, beta=0.0, skip_zero_advantage=False)):
        update = make(objective, policy)
        calls = []

        def counted(model, *args, calls=calls, policy=update.policy, **kwargs):
            calls.append(model is policy)
            return completion_logprobs(model, *args, **kwargs)

        update.forward = counted
        exp = update.experience(shifted(rollout, shift), rewards, policy, fresh=4)  # the reference: a copy
        assert not any(calls) and "old_log_probs" not in exp  # measured by the update's own forward passes
        objective.prepare(exp)
        metrics = update.run(shifted(rollout, shift), exp, [Recorder(update.policy.parameters())])
        assert metrics["rollout/logprob_abs_diff"] == pytest.approx(0.25, abs=1e-4)
    update = make(TBRM(beta=0.5), policy)  # the engine's own log-probs: the trainer agrees to rounding
    exp = update.experience(rollout, rewards, policy)
    assert update.run(rollout, exp, [Recorder(update.policy.parameters())])["rollout/logprob_abs_diff"] < 1e-5


def test_logprob_abs_diff_at_the_sampling_temperature_when_the_update_uses_another(setting):
    policy, _, rollout, rewards = setting
    update = make(TBRM(beta=0.5), policy, temperature=0.7)  # TBRM's log-probs are of the raw logits
    with torch.no_grad():
        tempered = completion_logprobs(policy, rollout, temperature=0.7)[0]
    sampled = copy.copy(rollout)
    sampled.behavior_log_probs, sampled.stats = (tempered - 0.1) * rollout.completion_mask, None
    exp = update.experience(sampled, rewards, policy)
    metrics = update.run(sampled, exp, [Recorder(update.policy.parameters())])
    assert metrics["rollout/logprob_abs_diff"] == pytest.approx(0.1, abs=1e-4)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_is_correction_uses_the_trainers_log_probs_and_truncated_weights(setting, level):
    policy, _, rollout, rewards = setting
    ratio = torch.tensor([3.0, 1.5, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0])  # pi_trainer / pi_rollout per token
    objective = GRPO(group_size=2, beta=0.0)
    update = make(objective, policy, is_correction=level, is_threshold=2.0)
    with torch.no_grad():
        trainer = completion_logprobs(policy, rollout)[0]
    mask = rollout.completion_mask
    sampled = copy.copy(rollout)
    sampled.behavior_log_probs, sampled.stats = (trainer - ratio.log()[:, None]) * mask, None
    exp = update.experience(sampled, rewards)
    torch.testing.assert_close(exp["old_log_probs"] * mask, trainer * mask, atol=1e-5, rtol=0)
    weights = exp["is_weights"]
    lengths = mask.sum(1)
    expected = ratio.clamp(max=2.0) if level == "token" else (ratio.log() * lengths).exp().clamp(max=2.0)
    for i in range(len(ratio)):
        row = weights[i, : int(lengths[i])]
        torch.testing.assert_close(row, torch.full_like(row, float(expected[i])), atol=1e-4, rtol=1e-4)
        assert (weights[i, int(lengths[i]) :] == 0).all()
    objective.prepare(exp)
    metrics = update.run(sampled, exp, [Recorder(update.policy.parameters())])
    assert metrics["grpo/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # against the trainer's own log-probs
    assert metrics["rollout/is_truncated_frac"] > 0 and 0 < metrics["rollout/is_weight_mean"] <= 2.0
    expected_diff = float(masked_mean(ratio.log().abs()[:, None] * mask, mask))
    assert metrics["rollout/logprob_abs_diff"] == pytest.approx(expected_diff, abs=1e-4)


def test_is_correction_needs_an_objective_with_ratios(setting):
    policy = setting[0]
    with pytest.raises(ValueError, match="rollout.is_correction=token corrects the ratio of GRPO and PPO; tbrm"):
        make(TBRM(beta=0.5), policy, is_correction="token")
