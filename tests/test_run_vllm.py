"""run.py with rollout.engine=vllm on vLLM's CPU build (CI's second stage): TBRM, GRPO and PPO
train end to end with the train/inference mismatch logged every step, and mode=eval / generate
sample with the same engine."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import ROOT, run_py

pytest.importorskip("vllm")

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# the smoke budget on a tiny model whose head size (64) vLLM's CPU attention takes
VLLM_TINY = [
    "experiment=smoke",
    "model.architecture.hidden_size=64",
    "model.architecture.num_heads=1",
    "model.architecture.num_layers=2",
    "model.architecture.intermediate_size=128",
    "model.architecture.max_positions=1024",  # vLLM holds prompts to the context; a math prompt is ~700 characters
    "model.warm_start.steps=20",
    "rollout.engine=vllm",
    "rollout.vllm.kv_cache_memory_bytes=33554432",  # 32 MiB: the KV cache these rows need, not 30% of RAM
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm_runs")  # one cache: one warm start for every run here


def run(tmp, *overrides):
    return run_py(ROOT, tmp, *overrides, tiny=VLLM_TINY)


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


@pytest.mark.parametrize("algorithm", ["tbrm", "grpo", "ppo"])
def test_training_on_vllm_rollouts_logs_a_small_mismatch_every_step(tmp, algorithm):
    proc = run(tmp, f"algorithm={algorithm}", f"run_name={algorithm}")
    out = only((tmp / f"logs/{algorithm}/runs").iterdir())
    rows = [r for r in csv.DictReader((out / "csv/metrics.csv").open()) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    diffs = [float(r["rollout/logprob_abs_diff"]) for r in rows]
    assert all(0 <= d < 1e-4 for d in diffs), diffs  # float32 on both sides: rounding only
    assert "building the vLLM engine from" in proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["algorithm"] == algorithm


def test_grpo_with_truncated_is_correction(tmp):
    run(tmp, "algorithm=grpo", "rollout.is_correction=token", "run_name=grpo_is")
    out = only((tmp / "logs/grpo_is/runs").iterdir())
    rows = [r for r in csv.DictReader((out / "csv/metrics.csv").open()) if r.get("train/loss")]
    assert len(rows) == 4
    for r in rows:  # the engine and the trainer agree, so the weights stay at 1
        assert float(r["rollout/is_weight_mean"]) == pytest.approx(1.0, abs=1e-3)
        assert float(r["rollout/is_truncated_frac"]) == 0.0


def test_eval_and_generate_sample_with_the_vllm_engine(tmp, math_data_dir):
    proc = run(tmp, "mode=eval", f"eval.local_dir={math_data_dir}", "~eval.benchmarks.aime25",
               *[f"~eval.benchmarks.{b}" for b in ("minerva_math", "olympiadbench", "gsm8k_test")],
               *[f"eval.benchmarks.{b}.limit=3" for b in ("aime24", "amc23", "math500")],
               "eval.samples.aime24=4", "eval.samples.amc23=4", "eval.k=[2]")  # fmt: skip
    out = only((tmp / "logs/eval/runs").iterdir())
    results = json.loads((out / "eval.json").read_text())["results"]
    assert list(results) == ["aime24", "amc23", "math500", "mean"] and results["mean"]["problems"] == 9
    assert "| benchmark | problems | avg@1 | avg@4 | pass@2 | score |" in proc.stdout
    assert (proc.stdout + proc.stderr).count("building the vLLM engine from") == 1  # one engine for all benchmarks
    run(tmp, "mode=generate", "generate.limit=8", "generate.n=2", f"generate.dirpath={tmp}/generated")
    rows = [json.loads(line) for shard in sorted((tmp / "generated").iterdir()) for line in shard.open()]
    assert len(rows) == 16 and all(len(r["behavior_logprobs"]) == len(r["completion_ids"]) for r in rows)


def test_an_interrupted_run_resumes_exactly_on_vllm(tmp):
    """Killed after its step-2 checkpoint and resumed: the resumed engine (built again, its weights
    loaded from the checkpoint's policy, its seeds from the restored generator) draws the
    uninterrupted run's completions, and the metrics are the same."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import run_env
    from test_resume import dumped, rows

    budget = ["trainer.max_steps=4", "trainer.val_check_interval=2", "callbacks.rollout_dump.enabled=true", "seed=5"]
    whole, resumed = tmp / "whole", tmp / "resumed"
    run(tmp, *budget, f"hydra.run.dir={whole}")
    cmd = [sys.executable, "run.py", f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache", *VLLM_TINY, *budget,
           f"hydra.run.dir={resumed}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt, deadline = resumed / "checkpoints" / "last.ckpt", time.time() + 600
    while not ckpt.exists():  # written atomically: it exists once whole
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "summary.json").exists()
    run(tmp, *budget, f"ckpt_path={ckpt}")
    for step in (2, 3):
        assert dumped(resumed, step) == dumped(whole, step)
    assert rows(resumed / "csv" / "metrics.csv") == rows(whole / "csv" / "metrics.csv")


@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu"])
def test_each_rank_samples_with_its_own_engine_synced_after_every_update(tmp, trainer):
    """Two ranks, each its own vllm.LLM in its process (under FSDP synced from the weights gathered
    for the step). PPO's critic gives a non-zero update from the first step, so a rank whose engine
    kept old weights would show a mismatch."""
    run(tmp, "algorithm=ppo", f"trainer={trainer}", "optimizer.lr=1e-3", "callbacks.rollout_dump.enabled=true",
        f"run_name={trainer}")  # fmt: skip
    out = only((tmp / f"logs/{trainer}/runs").iterdir())
    rows = [r for r in csv.DictReader((out / "csv/metrics.csv").open()) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert all(float(r["train/grad_norm"]) > 0 for r in rows)  # the weights change at every step
    diffs = [float(r["rollout/logprob_abs_diff"]) for r in rows]  # the mean over both ranks' engines
    assert all(0 <= d < 1e-4 for d in diffs), diffs
    for step in range(4):
        ranks = [[json.loads(line)["prompt"] for line in (out / "rollouts" / f"rollouts-step{step:06d}-rank{r}.jsonl")
                  .open()] for r in (0, 1)]  # fmt: skip
        assert len(ranks[0]) == len(ranks[1]) == 8 and not set(ranks[0]) & set(ranks[1])
    assert (out / "run.log").read_text().count("building the vLLM engine") == 1  # rank zero's own log
    assert (out / "train_ddp_process_1.log").read_text().count("building the vLLM engine") == 1
    checksums = json.loads((out / "summary.json").read_text())["data_parallel"]["policy_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
