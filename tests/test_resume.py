"""Exact resume: a run killed (SIGKILL) after a checkpoint and resumed gives the uninterrupted run's
metrics, prompts and completions from the checkpoint on, in one run folder, one CSV and one W&B run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_env, run_py

from tbrm.resume import checkpoint_to_resume, kept_csv_rows, run_dir
from tbrm.wandb_offline import offline_run_id, read_offline_runs

pytestmark = pytest.mark.slow

# 6 steps, a validation and a checkpoint after steps 2, 4 and 6; every rollout dumped
BUDGET = ["trainer.max_steps=6", "trainer.val_check_interval=2", "callbacks.rollout_dump.enabled=true", "seed=5"]


def start(tmp: Path, run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "run.py", f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache", *TINY, *BUDGET,
           f"hydra.run.dir={run}", *extra]  # fmt: skip
    env = run_env()
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_checkpoints(proc: subprocess.Popen, ckpt: Path, writes: int, timeout: float = 600) -> None:
    """SIGKILL ``proc`` as soon as ``ckpt`` has been (atomically, so as a new file) written ``writes`` times."""
    seen, deadline = set(), time.time() + timeout
    while len(seen) < writes:
        assert proc.poll() is None, (
            f"the run ended before its checkpoint {len(seen) + 1}:\n{proc.stderr.read()[-3000:]}"
        )
        assert time.time() < deadline, "no checkpoint in time"
        try:
            seen.add(ckpt.stat().st_ino)
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def rows(path: Path) -> list[dict]:
    """CSV rows without the timing columns (perf/*), empty cells dropped."""
    with open(path, newline="") as file:
        return [{k: v for k, v in r.items() if v != "" and not k.startswith("perf/")} for r in csv.DictReader(file)]


def dumped(run: Path, step: int) -> list[dict]:
    lines = (run / "rollouts" / f"rollouts-step{step:06d}-rank0.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("prompt", "completion", "reward", "behavior_logprobs")} for r in map(json.loads, lines)]


@pytest.fixture(scope="module", params=[[], ["data.task.num_train=32"]], ids=["mid-epoch", "at-an-epoch-end"])
def runs(request, tmp_path_factory):
    """The uninterrupted run, and the same run killed after its step-4 checkpoint and resumed; with
    32 training prompts (2 steps an epoch), the checkpoints fall at epoch ends."""
    tmp = tmp_path_factory.mktemp("resume")
    whole, resumed = tmp / "whole", tmp / "resumed"
    first = start(tmp, whole, *request.param)
    assert first.wait(timeout=900) == 0, first.stderr.read()[-3000:]
    killed = start(tmp, resumed, *request.param)
    kill_after_checkpoints(killed, resumed / "checkpoints" / "last.ckpt", writes=2)  # after step 4's validation
    assert not (resumed / "summary.json").exists()
    proc = run_py(ROOT, tmp, *BUDGET, *request.param, f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}")
    return whole, resumed, proc


def test_resumed_run_continues_in_its_own_folder(runs):
    whole, resumed, proc = runs
    assert f"resuming from {resumed / 'checkpoints' / 'last.ckpt'} (step 4) in {resumed}" in proc.stdout + proc.stderr
    assert not (resumed.parent / "logs" / "train" / "runs").exists()  # no second run folder
    assert json.loads((resumed / "status.json").read_text())["status"] == "completed"


def test_metrics_after_the_checkpoint_equal_the_uninterrupted_run(runs):
    whole, resumed, _ = runs
    a, b = rows(whole / "csv" / "metrics.csv"), rows(resumed / "csv" / "metrics.csv")
    assert [r["step"] for r in b] == [r["step"] for r in a]  # no step missing or twice, same order
    later = [(x, y) for x, y in zip(a, b, strict=True) if int(x["step"]) >= 4]  # what the resumed process logged
    assert len(later) == 3 and any("train/loss" in x for x, _ in later) and any("val/accuracy" in x for x, _ in later)
    assert b == a  # the rows before the checkpoint come back from the killed run's CSV
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (whole, resumed))
    assert sa["final"] == sb["final"] and sa["initial"] == sb["initial"] and sb["steps"] == 6
    assert sb["wall_time_s"] > sum(float(r["perf/step_s"]) for r in csv.DictReader(open(resumed / "csv/metrics.csv"))
                                   if r.get("perf/step_s"))  # fmt: skip


def test_resumed_steps_see_the_same_prompts_and_draw_the_same_completions(runs):
    whole, resumed, _ = runs
    for step in (4, 5):
        assert dumped(resumed, step) == dumped(whole, step)
    assert dumped(whole, 4) != dumped(whole, 0)


def test_one_wandb_run_whose_history_equals_the_uninterrupted_run(runs):
    whole, resumed, _ = runs
    a, b = read_offline_runs(whole), read_offline_runs(resumed)
    assert b["parts"] == 2 and b["id"] == json.loads((resumed / "run.json").read_text())["wandb_id"]
    assert {offline_run_id(p) for p in (resumed / "wandb").glob("offline-run-*")} == {b["id"]}
    strip = [{k: v for k, v in r.items() if not k.startswith(("perf/", "_"))} for r in a["history"]]
    assert [{k: v for k, v in r.items() if not k.startswith(("perf/", "_"))} for r in b["history"]] == strip


def test_ckpt_path_last_and_missing_paths(runs, tmp_path):
    whole, resumed, _ = runs
    assert checkpoint_to_resume("last", resumed) == resumed / "checkpoints" / "last.ckpt"
    assert checkpoint_to_resume(str(resumed), tmp_path) == resumed / "checkpoints" / "last.ckpt"
    assert run_dir(str(resumed / "checkpoints" / "last.ckpt"), "new") == str(resumed)
    assert run_dir("last", "new") == "new" and run_dir(None, "new") == "new"
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no checkpoint in"):
        checkpoint_to_resume("last", tmp_path)
    assert [r["step"] for r in kept_csv_rows(whole / "csv" / "metrics.csv", 2)] == [0, 0, 0, 1, 1]


def test_a_mistyped_ckpt_path_fails_before_any_work(tmp_path):
    began = time.time()
    proc = run_py(ROOT, tmp_path, f"ckpt_path={tmp_path}/nope.ckpt", check=False)
    assert proc.returncode != 0 and f"ckpt_path={tmp_path}/nope.ckpt does not exist" in proc.stderr
    assert "warm start (SFT)" not in proc.stderr and not (tmp_path / "cache").exists()
    assert time.time() - began < 60


def test_a_checkpoint_of_another_world_size_is_refused():
    from types import SimpleNamespace

    from tbrm.resume import load_module_state

    module = SimpleNamespace(replay=None)
    with pytest.raises(ValueError, match=r"saved by 2 data-parallel rank\(s\) and this run has 1"):
        load_module_state(module, {"ranks": [{}, {}]})
    load_module_state(module, {"ranks": [{"completions_seen": 8, "wall_time_s": 3.0}]})
    assert module.completions_seen == 8 and module.wall_time_before == 3.0
