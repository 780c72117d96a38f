"""The step's data source through the module: stored trajectories train without generation,
ratio objectives need their behaviour log-probs, replay answers a share of each step from older
rollouts and is checkpointed, and the dump callback takes each step's fresh completions once."""

import pytest
import torch
from test_module import alternating_reward, fit, make

from tbrm.data.arithmetic import ArithmeticTask
from tbrm.objectives import GRPO, TBRM


def _trajectory_file(tiny_model_dir, tmp_path, n=2, with_behavior=True):
    """Trajectories sampled from the tiny model, dumped as a run would dump them."""
    from tbrm.data.trajectories import TrajectoryWriter, records_from_rollout
    from tbrm.models.loading import load_model_and_tokenizer
    from tbrm.rollout import generate_rollouts

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    prompts = [r["prompt"] for r in ArithmeticTask(b_digits=1, num_val=8, num_test=8).splits()["train"][:8]]
    torch.manual_seed(0)
    rollout = generate_rollouts(model, tokenizer, prompts, ["1"] * len(prompts), n=n, max_new_tokens=8)
    records = records_from_rollout(rollout, [float(i % 2) for i in range(len(rollout))],
                                   eos_token_id=tokenizer.eos_token_id, temperature=1.0)  # fmt: skip
    if not with_behavior:
        records = [{**r, "behavior_logprobs": None} for r in records]
    TrajectoryWriter(tmp_path / "traj").write(records, step=0)
    return str(tmp_path / "traj")


def test_training_from_stored_trajectories_generates_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from tbrm.data.datamodule import TrajectoryDataModule

    path = _trajectory_file(tiny_model_dir, tmp_path, n=1)
    module = make(tiny_model_dir, objective=TBRM(beta=0.5))
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}

    def no_generation(*args, **kwargs):
        raise AssertionError("training from a file must not generate")

    monkeypatch.setattr(module.engine, "generate", no_generation)
    task = ArithmeticTask(b_digits=1, num_val=8, num_test=8)
    trainer, metrics = fit(module, steps=2, datamodule=TrajectoryDataModule(task, path, batch_size=4))
    assert trainer.global_step == 2 and module.generated == 0
    assert metrics[-1]["train/generated"] == 0 and metrics[-1]["train/completions"] == 8
    # one pass over the 8 stored trajectories, half rewarded: the stored rewards, not recomputed ones
    assert (metrics[0]["train/reward_mean"] + metrics[1]["train/reward_mean"]) / 2 == 0.5
    assert any(not torch.equal(before[k], v) for k, v in module.policy.state_dict().items())


def test_ratio_objectives_need_stored_behaviour_log_probs(tiny_model_dir, tmp_path):
    from tbrm.data.datamodule import TrajectoryDataModule

    path = _trajectory_file(tiny_model_dir, tmp_path, n=2, with_behavior=False)
    task = ArithmeticTask(b_digits=1, num_val=8, num_test=8)
    module = make(tiny_model_dir, objective=GRPO(group_size=2, beta=0.0))
    with pytest.raises(ValueError, match="grpo needs the behaviour log-probs .* 4 of 4 stored trajectories"):
        fit(module, steps=1, datamodule=TrajectoryDataModule(task, path, batch_size=4, group_size=2))
    path = _trajectory_file(tiny_model_dir, tmp_path / "b", n=2)
    module = make(tiny_model_dir, objective=GRPO(group_size=2, beta=0.0))
    trainer, metrics = fit(module, steps=2, datamodule=TrajectoryDataModule(task, path, batch_size=4, group_size=2))
    assert trainer.global_step == 2 and metrics[-1]["grpo/ratio_mean"] == pytest.approx(1.0, abs=0.05)


def test_replay_answers_a_share_of_each_step_from_older_rollouts(tiny_model_dir):
    from tbrm.data.replay import ReplayBuffer

    torch.manual_seed(0)
    buffer = ReplayBuffer(capacity=64, max_age=2, fraction=0.5)
    module = make(tiny_model_dir, reward=alternating_reward, replay=buffer)  # 4 prompts x n=2 per step
    trainer, metrics = fit(module, steps=3)
    # step 0: the buffer is empty, 4 prompts fresh; steps 1, 2: 2 groups replayed, 2 prompts fresh
    assert module.generated == 8 + 4 + 4 and metrics[-1]["train/completions"] == 24
    assert metrics[1]["replay/drawn"] == 4 and metrics[1]["replay/age_mean"] == 1
    assert len(buffer) == 16 and "replay/drawn" not in metrics[0]


def test_the_replay_buffer_is_checkpointed(tiny_model_dir, tmp_path):
    from tbrm.data.replay import ReplayBuffer

    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=alternating_reward, replay=ReplayBuffer(capacity=64, fraction=0.5))
    fit(module, steps=2)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    restored = make(tiny_model_dir, replay=ReplayBuffer(capacity=64, fraction=0.5, seed=7))
    restored.on_load_checkpoint(torch.load(tmp_path / "c.ckpt", weights_only=True))
    assert restored.generated == module.generated == 12 and len(restored.replay) == len(module.replay) == 12
    assert restored.replay.sample(2, 2) == module.replay.sample(2, 2)


def test_take_generated_hands_each_steps_fresh_records_once(tiny_model_dir):
    torch.manual_seed(0)
    module = make(tiny_model_dir, reward=alternating_reward)
    fit(module, steps=1)
    records, step = module.source.take_generated()
    assert step == 0 and len(records) == 8 and module.source.take_generated() is None
    assert [r["reward"] for r in records] == [float(i % 2) for i in range(8)]
    assert {r["policy"] for r in records} == {str(tiny_model_dir)} and all(r["completion_ids"] for r in records)
