"""Trajectory records: dump -> load is exact; bad rows are named or counted; shards are atomic."""

import json

import pytest
import torch

from tbrm.data.trajectories import (
    BadTrajectoryError,
    TrajectoryWriter,
    load_trajectories,
    records_from_rollout,
    to_rollout_batch,
)
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.rollout import generate_rollouts

PROMPTS = ["1*2=", "13*24=", "5+6=", "98*76="]
ANSWERS = ["2", "312", "11", "7448"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def _rollout(tiny, seed=0, n=2):
    model, tokenizer = tiny
    torch.manual_seed(seed)
    rollout = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=n, temperature=0.8, max_new_tokens=12)
    rewards = [float(i % 3 == 0) for i in range(len(rollout))]
    return rollout, rewards


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_dump_then_load_is_exact(tiny, tmp_path, fmt):
    model, tokenizer = tiny
    rollout, rewards = _rollout(tiny)
    records = records_from_rollout(rollout, rewards, eos_token_id=tokenizer.eos_token_id, policy="p", step=3,
                                   temperature=0.8, top_p=1.0)  # fmt: skip
    writer = TrajectoryWriter(tmp_path / "rollouts", fmt)
    writer.write(records[:5], step=3)
    writer.write(records[5:], step=4)
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [
        f"rollouts-step000003-rank0.{fmt}",
        f"rollouts-step000004-rank0.{fmt}",
    ]
    loaded, skipped = load_trajectories(str(tmp_path / "rollouts"))
    assert skipped == 0 and [r["reward"] for r in loaded] == rewards
    assert [(r["policy"], r["step"], r["temperature"]) for r in loaded[:1]] == [("p", 3, 0.8)]
    back = to_rollout_batch(loaded, tokenizer)
    same = rollout.select(list(range(len(rollout))))  # padding columns trimmed, as stored
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "behavior_log_probs"):
        assert torch.equal(getattr(back, name), getattr(same, name)), name
    assert back.completions == rollout.completions and back.answers == rollout.answers


def test_text_only_records_are_tokenized_with_eos_when_finished(tiny):
    _, tokenizer = tiny
    records = [
        {"prompt": "1*2=", "completion": "1*2=2|#### 2", "answer": "2", "reward": 1.0, "finished": True},
        {"prompt": "5+6=", "completion": "11", "answer": "11", "reward": 0.0},
    ]
    from tbrm.data.trajectories import validate_record

    batch = to_rollout_batch([validate_record(r, "x") for r in records], tokenizer)
    assert batch.completion_mask.sum(1).tolist() == [len("1*2=2|#### 2") + 1, 2]
    assert batch.completion_ids[0, len("1*2=2|#### 2")].item() == tokenizer.eos_token_id
    assert torch.all(batch.behavior_log_probs == 0)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row,problem",
    [
        ({"prompt": "a", "completion": "b", "answer": "1"}, "`reward` must be a finite number"),
        ({"prompt": "a", "completion": "", "answer": "1", "reward": 1}, "`completion` must be a non-empty string"),
        ({"prompt": "a", "completion": "b", "answer": "1", "reward": "1"}, "`reward` must be a finite number"),
        ({"prompt": "a", "completion": "b", "reward": 1, "behavior_logprobs": ["x"]}, "`behavior_logprobs` must be"),
        ({"prompt": "a", "completion": "b", "reward": 1, "behavior_logprobs": [-1.0], "completion_ids": [1, 2]},
         "`behavior_logprobs` has 1 entries for 2 `completion_ids`"),
        ({"prompt": "a", "completion": "b", "reward": 1, "answer": {"x": 1}}, "`answer` must be a string or a number"),
    ],
)  # fmt: skip
def test_bad_rows_are_named_or_counted(tmp_path, row, problem):
    good = {"prompt": "1+1=", "completion": "2", "answer": "2", "reward": 1.0}
    path = _write(tmp_path / "t.jsonl", [good, row, good])
    with pytest.raises(BadTrajectoryError, match=rf"t\.jsonl, row 1: {problem}.*skip_bad_rows=true"):
        load_trajectories(str(path))
    records, skipped = load_trajectories(str(path), skip_bad_rows=True)
    assert (len(records), skipped) == (2, 1)


def test_missing_paths_and_a_failed_write_leave_no_shard(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trajectories(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .jsonl or .parquet"):
        load_trajectories(str(tmp_path / "empty"))
    writer = TrajectoryWriter(tmp_path / "out")
    writer.write([{"prompt": "a", "completion": "b", "answer": "1", "reward": 1.0}], step=0)
    with pytest.raises(TypeError):  # not serialisable: the crash happens before anything is renamed
        writer.write([{"prompt": "a", "completion": "b", "reward": object()}], step=1)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["rollouts-step000000-rank0.jsonl"]
    assert len(load_trajectories(str(tmp_path / "out"))[0]) == 1
    with pytest.raises(ValueError, match="format must be one of"):
        TrajectoryWriter(tmp_path, "csv")


def test_a_line_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "completion": "b", "reward": 1}\n\n{"prompt": "a", "compl\n')
    with pytest.raises(BadTrajectoryError, match=r"t\.jsonl, row 2: not a JSON object"):
        load_trajectories(str(path))
    assert load_trajectories(str(path), skip_bad_rows=True)[1] == 1


def test_generate_trajectories_writes_scored_groups_in_shards(tiny, tmp_path):
    from tbrm.data.trajectories import generate_trajectories

    model, tokenizer = tiny
    records = [{"prompt": p, "answer": a} for p, a in zip(PROMPTS[:3], ANSWERS[:3], strict=True)]
    writer = TrajectoryWriter(tmp_path / "gen")
    torch.manual_seed(0)
    written, accuracy = generate_trajectories(
        model, tokenizer, records, lambda c, a: [1.0] * len(c), writer, n=2, batch_size=4, max_new_tokens=6, policy="m"
    )
    assert (written, accuracy) == (6, 1.0)
    assert len(list((tmp_path / "gen").iterdir())) == 2  # 2 prompts per call: shards of 4 and 2
    rows, _ = load_trajectories(str(tmp_path / "gen"))
    assert [r["prompt"] for r in rows] == [p for p in PROMPTS[:3] for _ in range(2)]
    assert all(r["policy"] == "m" and r["reward"] == 1.0 and r["behavior_logprobs"] for r in rows)
    with pytest.raises(ValueError, match="generate.n must be >= 1"):
        generate_trajectories(model, tokenizer, records, None, writer, n=0)
