"""Data-parallel runs of the real run.py on 2 gloo processes: ``trainer=ddp_cpu`` (Lightning DDP)
and ``trainer=fsdp_cpu`` (FSDP2 under Lightning's ModelParallelStrategy).

Stored trajectories with mixed rewards make every algorithm's gradient non-zero; on them a
data-parallel run must give the weights of one process training on the union of both ranks'
batches. Fresh rollouts show the data sharding (each rank its own prompts, whole groups) and an
exact resume of a killed run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_env, run_py
from safetensors.torch import load_file

from tbrm.distributed import weights_checksum
from tbrm.wandb_offline import read_offline_run

pytestmark = pytest.mark.slow

DDP = ["trainer=ddp_cpu"]
PARALLEL = ["ddp_cpu", "fsdp_cpu"]


def train_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as file:
        return [r for r in csv.DictReader(file) if r.get("train/loss")]


def policy(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "policy" / "model.safetensors")


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory) -> Path:
    """128 stored completions (64 prompts x 2) of the warm start, rewards set to a fixed 0/1 pattern
    (a third of them 1), so that every group of 2 has a spread in some steps."""
    tmp = tmp_path_factory.mktemp("ddp_data")
    run_py(ROOT, tmp, "mode=generate", "generate.n=2", "generate.limit=64", f"hydra.run.dir={tmp / 'gen'}")
    (shard,) = (tmp / "gen" / "trajectories").iterdir()
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["reward"] = float((7 * i + i // 2) % 3 == 0)
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp


@pytest.fixture(scope="module")
def single_runs(trajectories, tmp_path_factory):
    """One process on the stored trajectories, per algorithm, run when first asked for."""
    runs = {}

    def get(algorithm: str, common: list[str]) -> Path:
        if algorithm not in runs:
            tmp = tmp_path_factory.mktemp(f"single_{algorithm}")
            run_py(ROOT, tmp, *common, f"hydra.run.dir={tmp / 'single'}")
            runs[algorithm] = tmp / "single"
        return runs[algorithm]

    return get


@pytest.fixture(scope="module", params=[(a, t) for a in ("tbrm", "grpo", "ppo") for t in PARALLEL], ids=str)
def stored_runs(request, trajectories, single_runs, tmp_path_factory):
    """One process and two data-parallel ranks on the same stored trajectories, seed and lr."""
    (algorithm, trainer), tmp = request.param, tmp_path_factory.mktemp(f"{request.param[1]}_{request.param[0]}")
    common = [f"algorithm={algorithm}", "data=trajectories", f"data.path={trajectories / 'gen' / 'trajectories'}",
              "rollout.n=2", "optimizer.lr=1e-3", "seed=1", f"paths.cache_dir={trajectories}/cache"]  # fmt: skip
    single, ddp = single_runs(algorithm, common), tmp / "parallel"
    run_py(ROOT, tmp, *common, f"trainer={trainer}", f"hydra.run.dir={ddp}")
    return algorithm, single, ddp


def test_ranks_end_with_one_policy_that_of_one_process_on_the_union(stored_runs):
    algorithm, single, ddp = stored_runs
    summary = json.loads((ddp / "summary.json").read_text())
    checksums = summary["data_parallel"]["policy_checksums"]
    assert summary["data_parallel"]["world_size"] == 2 and len(checksums) == 2
    assert checksums[0] == checksums[1]  # (b) the two ranks hold the same weights
    initial = Path(json.loads((single / "summary.json").read_text())["policy_path"])
    saved, alone, start = policy(ddp), policy(single), load_file(initial / "model.safetensors")
    model = torch.nn.ParameterList([torch.nn.Parameter(t) for t in saved.values()])
    assert weights_checksum(model) == pytest.approx(checksums[0], rel=1e-12)  # the saved policy is theirs
    moved = max(float((alone[k] - start[k]).abs().max()) for k in alone)
    diff = max(float((alone[k] - saved[k]).abs().max()) for k in alone)
    assert moved > 1e-4, "the steps should change the weights"
    assert diff < 1e-3 * moved, (algorithm, diff, moved)  # (c) the weights of one process on the union
    held, total = summary["data_parallel"]["policy_params_per_rank"], sum(t.numel() for t in saved.values())
    if ddp.parent.name.startswith("fsdp"):  # sharded: each rank held its half between steps
        assert sum(held) == total and max(held) < 0.6 * total
    else:
        assert held == [total, total]


def test_logged_losses_are_those_of_the_whole_batch(stored_runs):
    algorithm, single, ddp = stored_runs
    a, b = train_rows(single), train_rows(ddp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["0", "1", "2", "3"]
    for key in ("train/loss", "train/reward_mean", "train/completions", "train/grad_norm"):
        assert [float(r[key]) for r in b] == pytest.approx([float(r[key]) for r in a], rel=1e-5, abs=1e-7), key
    assert float(b[-1]["train/completions"]) == 4 * 16  # 4 steps of 16 stored trajectories, over both ranks


def test_one_summary_one_csv_and_one_wandb_run(stored_runs):
    _, _, ddp = stored_runs
    (run_dir,) = (ddp / "wandb").glob("offline-run-*")
    wb = read_offline_run(run_dir)
    assert [row["trainer/global_step"] for row in wb["history"] if "train/loss" in row] == [0, 1, 2, 3]
    assert len(list(ddp.rglob("summary.json"))) == 1 and len(list(ddp.rglob("metrics.csv"))) == 1
    status = json.loads((ddp / "status.json").read_text())
    assert status["status"] == "completed"


# ----------------------------------------------------------------------------- fresh rollouts
FRESH = ["algorithm=grpo", "rollout.n=2", "callbacks.rollout_dump.enabled=true", "seed=4"]


def start(tmp: Path, run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "run.py", f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache", *TINY, *FRESH,
           f"hydra.run.dir={run}", *extra]  # fmt: skip
    log = open(tmp / f"{run.name}.stderr", "w")  # a file, not a pipe: a full pipe would stall the run
    return subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def stderr(tmp: Path, run: Path) -> str:
    return (tmp / f"{run.name}.stderr").read_text()[-3000:]


def kill_after_first_checkpoint(proc: subprocess.Popen, ckpt: Path, timeout: float = 600) -> None:
    """SIGKILL the run's whole process group (both ranks) once ``ckpt`` exists."""
    deadline = time.time() + timeout
    while not ckpt.exists():
        assert proc.poll() is None, "the run ended before its checkpoint"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def fresh_single(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fresh_single")
    run_py(ROOT, tmp, *FRESH, f"hydra.run.dir={tmp / 'single'}")
    return tmp / "single"


@pytest.fixture(scope="module", params=PARALLEL)
def fresh_runs(request, fresh_single, tmp_path_factory):
    """GRPO with fresh rollouts: one process, two ranks, and two ranks killed after the step-2
    checkpoint and resumed."""
    tmp, trainer = tmp_path_factory.mktemp(f"fresh_{request.param}"), [f"trainer={request.param}"]
    whole, resumed = tmp / "whole", tmp / "resumed"
    run_py(ROOT, tmp, *FRESH, *trainer, f"hydra.run.dir={whole}")
    kill_after_first_checkpoint(start(tmp, resumed, *trainer), resumed / "checkpoints" / "last.ckpt")
    assert not (resumed / "summary.json").exists()
    run_py(ROOT, tmp, *FRESH, *trainer, f"ckpt_path={resumed}")
    return fresh_single, whole, resumed


def dump(run: Path, step: int, rank: int) -> list[dict]:
    lines = (run / "rollouts" / f"rollouts-step{step:06d}-rank{rank}.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("prompt", "completion", "reward", "behavior_logprobs")} for r in map(json.loads, lines)]


def test_each_rank_samples_its_own_whole_groups_of_the_steps_prompts(fresh_runs):
    single, whole, _ = fresh_runs
    for step in range(4):
        ranks = [dump(whole, step, rank) for rank in (0, 1)]
        prompts = [[r["prompt"] for r in rows] for rows in ranks]
        assert len(prompts[0]) == len(prompts[1]) == 16  # 8 prompts x 2 completions on each rank
        assert not set(prompts[0]) & set(prompts[1])  # (a) different prompts
        for rows in prompts:  # a group's completions are adjacent, on one rank
            assert all(rows[i] == rows[i + 1] for i in range(0, len(rows), 2))
        alone = [r["prompt"] for r in dump(single, step, 0)]
        assert prompts[0] + prompts[1] == alone  # the union is the batch of one process, in order
        assert not (whole / "rollouts" / f"rollouts-step{step:06d}-rank2.jsonl").exists()


def test_a_killed_ddp_run_resumes_exactly_at_its_checkpoint(fresh_runs):
    _, whole, resumed = fresh_runs
    for step in (2, 3):  # after the step-2 checkpoint: each rank draws the completions it drew before
        for rank in (0, 1):
            assert dump(resumed, step, rank) == dump(whole, step, rank), (step, rank)

    def rows(run):
        return [{k: v for k, v in r.items() if v and not k.startswith("perf/")} for r in train_rows(run)]

    assert rows(resumed) == rows(whole)
    summary = json.loads((resumed / "summary.json").read_text())
    assert (
        summary["steps"] == 4
        and summary["data_parallel"]["policy_checksums"][0]
        == json.loads((whole / "summary.json").read_text())["data_parallel"]["policy_checksums"][0]
    )


def test_a_local_sweep_of_data_parallel_jobs_is_refused_before_any_work(tmp_path):
    proc = run_py(ROOT, tmp_path, "-m", "seed=0,1", *DDP, f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False)
    assert proc.returncode != 0
    assert "a sweep's jobs run data-parallel as Slurm jobs" in proc.stderr
    assert not (tmp_path / "cache").exists()  # refused before the warm start


def test_a_batch_that_does_not_divide_by_the_ranks_is_refused(tmp_path):
    proc = run_py(ROOT, tmp_path, *DDP, "data.batch_size=15", check=False)
    assert proc.returncode != 0 and "data.batch_size must be a multiple of the 2 data-parallel ranks" in proc.stderr


def test_a_signal_to_rank_zero_stops_both_ranks_at_one_step_and_resumes(tmp_path):
    run, long = tmp_path / "run", ["trainer.max_steps=40", "trainer.val_check_interval=40", "rollout.engine=compact"]
    proc = start(tmp_path, run, *DDP, *long)
    deadline = time.time() + 600
    while not (run / "rollouts" / "rollouts-step000002-rank1.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, stderr(tmp_path, run)
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # the process a user started: rank zero only
    assert proc.wait(timeout=300) == 143
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM" and 3 <= status["step"] < 40
    for rank in (0, 1):  # both ranks ended the same step, and no other
        assert len(list((run / "rollouts").glob(f"*-rank{rank}.jsonl"))) == status["step"]
    run_py(ROOT, tmp_path, *FRESH, *DDP, *long, f"ckpt_path={status['checkpoint']}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and json.loads((run / "status.json").read_text())["status"] == "completed"


def test_generate_on_two_processes_writes_a_shard_per_rank_without_collisions(tmp_path):
    """mode=generate started as 2 processes (as torchrun starts them: RANK, WORLD_SIZE): each takes
    every second prompt and writes shards of its own rank into the same folder."""
    out, common = tmp_path / "gen", ["mode=generate", "generate.limit=12", "generate.batch_size=4"]
    run_py(ROOT, tmp_path, "mode=sft")  # the warm start, once
    paths = [f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "run.py",
                *paths,
                *TINY,
                *common,
                f"generate.dirpath={out}",
                f"hydra.run.dir={tmp_path}/run{rank}",
            ],
            cwd=ROOT,
            env=run_env(RANK=str(rank), WORLD_SIZE="2"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"rollouts-step{s:06d}-rank{r}.jsonl" for s in (0, 1) for r in (0, 1)]  # 6 prompts each, 4 a shard
    prompts = {r: [json.loads(line)["prompt"] for s in (0, 1) for line in
                   (out / f"rollouts-step{s:06d}-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}  # fmt: skip
    assert len(prompts[0]) == len(prompts[1]) == 6 and not set(prompts[0]) & set(prompts[1])
    assert not (tmp_path / "run1" / "status.json").exists() and (tmp_path / "run0" / "status.json").exists()
