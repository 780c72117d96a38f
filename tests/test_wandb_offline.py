import random

import pytest
import wandb

from tbrm.wandb_offline import BLOCK, finish_and_wait, iter_records, read_offline_run, read_offline_runs


def offline_run(tmp_path, **kwargs):
    return wandb.init(mode="offline", dir=tmp_path, project="t", **kwargs)


def only_run_dir(tmp_path):
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    return run_dir


def test_reads_back_what_wandb_wrote(tmp_path):
    run = offline_run(tmp_path, group="sweep-1", tags=["tbrm", "x"], config={"algorithm": {"beta": 0.05}, "seed": 2})
    for step in range(3):
        run.log({"train/loss": 1.0 / (step + 1), "blob": "y" * 40_000}, step=step)  # > one 32 KiB block
    finish_and_wait()  # wandb closes the file after finish() returns: wait for it
    wb = read_offline_run(only_run_dir(tmp_path))
    assert wb["group"] == "sweep-1" and sorted(wb["tags"]) == ["tbrm", "x"] and wb["complete"]
    assert wb["config"]["algorithm"] == {"beta": 0.05} and wb["config"]["seed"] == 2
    assert [row["train/loss"] for row in wb["history"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert all(len(row["blob"]) == 40_000 for row in wb["history"])
    assert wb["summary"]["train/loss"] == pytest.approx(1 / 3)


def test_every_record_comes_back_whatever_its_size_and_place_in_the_blocks(tmp_path):
    """Records of 0 bytes to two blocks, many of them ending within a header's length of a block
    boundary (where the writer pads or writes an empty first chunk): none is lost or cut."""
    rng = random.Random(0)
    sizes = [0, 1, 7, BLOCK - 7, BLOCK - 14, BLOCK, BLOCK + 1, 2 * BLOCK + 3]
    sizes += [rng.choice([rng.randint(0, 64), rng.randint(BLOCK - 200, BLOCK + 200), rng.randint(0, 70_000)])
              for _ in range(150)]  # fmt: skip
    run = offline_run(tmp_path)
    for step, size in enumerate(sizes):
        run.log({"i": step, "blob": "z" * size}, step=step)
    finish_and_wait()
    history = read_offline_run(only_run_dir(tmp_path))["history"]
    assert [row["i"] for row in history] == list(range(len(sizes)))
    assert [len(row["blob"]) for row in history] == sizes


def test_a_file_cut_short_reads_up_to_its_last_whole_record(tmp_path):
    run = offline_run(tmp_path)
    for step in range(20):
        run.log({"i": step, "blob": "w" * 9_000}, step=step)
    finish_and_wait()
    (path,) = only_run_dir(tmp_path).glob("run-*.wandb")
    data = path.read_bytes()
    whole = len(read_offline_run(path.parent)["history"])
    cut = tmp_path / "cut"
    cut.mkdir()
    for end in (len(data) - 3, len(data) // 2, BLOCK + 11, 100):
        (cut / "run-x.wandb").write_bytes(data[:end])  # what a killed process leaves
        wb = read_offline_run(cut)
        assert not wb["complete"] and len(wb["history"]) <= whole
        assert end > len(data) // 2 or len(wb["history"]) < whole
        assert [row["i"] for row in wb["history"]] == list(range(len(wb["history"])))


def test_a_resumed_run_is_read_as_one(tmp_path):
    first = offline_run(tmp_path, id="abc12345")
    for step in range(4):
        first.log({"trainer/global_step": step, "train/loss": float(step)})
    finish_and_wait()
    second = offline_run(tmp_path, id="abc12345", resume="allow")
    for step in range(2, 6):  # resumed from a checkpoint after step 2: steps 2 and 3 again
        second.log({"trainer/global_step": step, "train/loss": step + 0.5})
    finish_and_wait()
    wb = read_offline_runs(tmp_path)
    assert wb["parts"] == 2 and wb["id"] == "abc12345"
    assert [r["train/loss"] for r in wb["history"]] == [0.0, 1.0, 2.5, 3.5, 4.5, 5.5]


def test_rejects_a_file_that_is_not_a_wandb_log(tmp_path):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a log at all")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(iter_records(bad))
    with pytest.raises(FileNotFoundError, match="no run-"):
        read_offline_run(tmp_path / "empty")
