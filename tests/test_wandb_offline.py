import pytest
import wandb

from tbrm.wandb_offline import iter_records, read_offline_run


def test_reads_back_what_wandb_wrote(tmp_path):
    run = wandb.init(
        mode="offline",
        dir=tmp_path,
        project="t",
        group="sweep-1",
        tags=["tbrm", "x"],
        config={"algorithm": {"beta": 0.05}, "seed": 2},
    )
    for step in range(3):
        run.log({"train/loss": 1.0 / (step + 1), "blob": "y" * 40_000}, step=step)  # > one 32 KiB block
    run.finish()
    wb = read_offline_run(next((tmp_path / "wandb").glob("offline-run-*")))
    assert wb["group"] == "sweep-1" and sorted(wb["tags"]) == ["tbrm", "x"]
    assert wb["config"]["algorithm"] == {"beta": 0.05} and wb["config"]["seed"] == 2
    assert [row["train/loss"] for row in wb["history"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert all(len(row["blob"]) == 40_000 for row in wb["history"])
    assert wb["summary"]["train/loss"] == pytest.approx(1 / 3)


def test_rejects_a_file_that_is_not_a_wandb_log(tmp_path):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a log at all")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(iter_records(bad))
    with pytest.raises(FileNotFoundError, match="no run-"):
        read_offline_run(tmp_path / "empty")
