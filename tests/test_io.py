"""Files other programs read are written whole or not at all: a failure mid-write (a crash, a full
disk) leaves the previous file, never a truncated one, and no temporary files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY, run_env

from tbrm.io import AtomicCheckpointIO, atomic_path, read_json, write_json


def full_disk(target, data: bytes):
    """Write half of ``data`` to ``target`` (a path or an open file), then fail as a full disk does."""
    if hasattr(target, "write"):
        target.write(data[: len(data) // 2])
    else:
        with open(target, "wb") as file:
            file.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "status.json"
    write_json(target, {"status": "completed"})
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        full_disk(tmp, json.dumps({"status": "failed", "error": "x" * 1000}).encode())
    assert read_json(target) == {"status": "completed"} and os.listdir(tmp_path) == ["status.json"]


def test_a_failed_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 2, "w": torch.ones(1000)}, target)
    monkeypatch.setattr(torch, "save", lambda obj, f: full_disk(f, b"\0" * 100_000))
    with pytest.raises(OSError, match=r"could not write the checkpoint .* No space left on device"):
        io.save_checkpoint({"global_step": 4, "w": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["global_step"] == 2 and os.listdir(tmp_path) == ["last.ckpt"]


def test_a_failed_save_of_a_folder_keeps_the_old_one(tmp_path):
    from tbrm.io import atomic_dir

    policy = tmp_path / "policy"
    with atomic_dir(policy) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(OSError, match="No space left"), atomic_dir(policy) as tmp:
        full_disk(tmp / "model.safetensors", b"\0" * 1000)
    assert os.listdir(tmp_path) == ["policy"] and os.listdir(policy) == ["config.json"]
    with atomic_dir(policy) as tmp:
        (tmp / "model.safetensors").write_text("w")
    assert os.listdir(tmp_path) == ["policy"] and os.listdir(policy) == ["model.safetensors"]


def test_read_json_names_a_cut_short_file(tmp_path):
    (tmp_path / "summary.json").write_text('{"steps": 4, "fin')
    with pytest.raises(ValueError, match=r"summary.json is not valid JSON .* cut short by a crash or a full disk"):
        read_json(tmp_path / "summary.json")


@pytest.fixture
def small_disk(tmp_path):
    """A 1.6 MB tmpfs: room for the run's files and one checkpoint of the test model (1.05 MB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_leaves_whole_checkpoints_and_a_readable_status(small_disk, tmp_path):
    """The run folder on a disk that fills up at the second checkpoint file: that file is not left
    truncated, the first stays loadable, status.json says why, and the report reads the job."""
    from tbrm.report.runs import read_job

    run = small_disk / "run"
    cmd = [sys.executable, "run.py", f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache", *TINY,
           f"hydra.run.dir={run}", "rollout.engine=compact"]  # fmt: skip
    env = run_env()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    status = read_json(run / "status.json")
    assert status["status"] == "failed" and "could not write the checkpoint" in status["error"]
    assert "the disk is probably full" in status["error"] and "run.py: the run ended with OSError" in proc.stderr
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]  # best-step*.ckpt did not fit: none, not a truncated one
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    job = read_job(run)
    assert job.status == "failed" and "the disk is probably full" in job.error
