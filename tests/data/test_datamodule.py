"""The DataModules: prompt batches, and stored trajectories with GRPO's groups kept whole."""

import json

import pytest
import torch

from tbrm.data.arithmetic import ArithmeticTask
from tbrm.data.datamodule import PromptDataModule, TrajectoryDataModule
from tbrm.data.trajectories import BadTrajectoryError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_batches_and_held_out_validation():
    dm = PromptDataModule(ArithmeticTask(b_digits=1, num_val=8, num_test=8), batch_size=4, val_batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["prompt"]) == len(batch["answer"]) == 4
    assert len(dm.val_dataloader().dataset) == 8
    with pytest.raises(ValueError, match="data.batch_size"):
        PromptDataModule(ArithmeticTask(), batch_size=0)


def test_datamodule_keeps_groups_whole(tmp_path):
    rows = [{"prompt": p, "completion": c, "answer": "1", "reward": 0.0} for p in "abcdef" for c in ("x", "y")]
    path = _write(tmp_path / "g.jsonl", rows)
    task = ArithmeticTask(b_digits=1, num_val=8, num_test=8)
    dm = TrajectoryDataModule(task, str(path), batch_size=4, group_size=2)
    torch.manual_seed(0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(len(b["records"]) == 4 for b in batches)
    for b in batches:
        assert b["prompt"][0] == b["prompt"][1] and b["prompt"][2] == b["prompt"][3]
        assert b["completion"] == ["x", "y", "x", "y"]
    assert len(dm.val_dataloader().dataset) == 8  # validation: the task's held-out prompts
    with pytest.raises(BadTrajectoryError, match="one prompt's group of 3"):
        TrajectoryDataModule(task, str(path), batch_size=3, group_size=3).train_dataloader()
    with pytest.raises(ValueError, match="multiple of the group size"):
        TrajectoryDataModule(task, str(path), batch_size=3, group_size=2)
    with pytest.raises(ValueError, match="needs data.path"):
        TrajectoryDataModule(task)
