"""End-to-end runs of the real run.py (Hydra, Lightning, W&B offline, CSV) with a tiny budget."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_py

from tbrm.wandb_offline import read_offline_run

pytestmark = pytest.mark.slow

run = run_py


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


@pytest.fixture(scope="module")
def first_run(repo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    run(repo_root, tmp, "seed=3", "algorithm.beta=0.2", "callbacks.rollout_dump.enabled=true")
    return tmp, only((tmp / "logs/train/runs").iterdir())


def test_summary_json(first_run):
    _, out = first_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["wall_time_s"] > 0 and summary["peak_mem_gb"] > 0
    for when in ("initial", "final"):
        assert set(summary[when]) == {"val/accuracy", "val/accuracy_sampled"}
        assert all(0.0 <= v <= 1.0 for v in summary[when].values())
    assert summary["algorithm"] == "tbrm" and summary["seed"] == 3
    assert (out / "policy/config.json").exists() and (out / "policy/tokenizer.json").exists()


def test_csv_metrics_and_resolved_config(first_run):
    _, out = first_run
    rows = list(csv.DictReader((out / "csv/metrics.csv").open()))
    train = [r for r in rows if r.get("train/loss")]
    val = [r for r in rows if r.get("val/accuracy")]
    assert [int(r["step"]) for r in train] == [0, 1, 2, 3]
    assert len(val) == 3  # before training, after step 2, after step 4
    for key in (
        "train/kl_ref",
        "train/entropy",
        "tbrm/residual_abs_mean",
        "perf/rollout_s",
        "perf/tokens_per_s",
        "rollout/logprob_abs_diff",
    ):
        assert all(r[key] != "" for r in train), key
    hparams = yaml.safe_load((out / "csv/hparams.yaml").read_text())
    assert hparams["algorithm"]["beta"] == 0.2 and hparams["seed"] == 3
    assert hparams["paths"]["output_dir"] == str(out)  # resolved, not an interpolation


def test_wandb_offline_run_written_by_wandb(first_run):
    _, out = first_run
    run_dir = only((out / "wandb").glob("offline-run-*"))
    wb = read_offline_run(run_dir)
    assert wb["config"]["algorithm"] == {"_target_": "tbrm.objectives.TBRM", "beta": 0.2, "initial_value": "centered"}
    assert wb["config"]["trainer"]["max_steps"] == 4 and wb["config"]["seed"] == 3
    assert wb["tags"] == ["tbrm"] and wb["group"] == ""  # a single run has no sweep group
    train = [row for row in wb["history"] if "train/loss" in row]
    assert [row["trainer/global_step"] for row in train] == [0, 1, 2, 3]
    assert len([row for row in wb["history"] if "val/accuracy" in row]) == 3
    assert {"val/accuracy_sampled", "train/loss", "tbrm/residual_abs_mean"} <= set(wb["summary"])


def test_second_run_reuses_warm_start_and_resumes_from_checkpoint(first_run, repo_root, tmp_path):
    """Training a finished run further: the resumed run continues in the run's own folder and CSV."""
    import shutil

    tmp, out = first_run
    copy = shutil.copytree(out, tmp_path / "run")  # the other tests read the first run as it is
    runs = sorted((tmp / "logs/train/runs").iterdir())
    proc = run(repo_root, tmp, "seed=3", "algorithm.beta=0.2", "trainer.max_steps=6", f"ckpt_path={copy}")
    assert "warm start (SFT)" not in proc.stderr  # cached: no second SFT
    assert sorted((tmp / "logs/train/runs").iterdir()) == runs  # no new run folder
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["steps"] == 6
    rows = list(csv.DictReader((copy / "csv/metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3, 4, 5]


def test_task_sft_only_builds_the_warm_start(first_run, repo_root):
    tmp, _ = first_run
    proc = run(repo_root, tmp, "mode=sft")
    assert "warm start report" in proc.stdout + proc.stderr
    assert not (tmp / "logs/sft/runs").exists() or not list((tmp / "logs/sft/runs").glob("*/summary.json"))


def test_multirun_of_the_baselines_groups_jobs_in_wandb(first_run, repo_root):
    """GRPO, PPO and the estimators on GRPO's loss (RLOO, REINFORCE++) end to end, each with its own
    method's rollouts per prompt, its metrics and its W&B run."""
    tmp, _ = first_run
    run(repo_root, tmp, "-m", "algorithm=grpo,ppo,rloo,reinforce_pp", "seed=1", "trainer.max_steps=2",
        "trainer.val_check_interval=2")  # fmt: skip
    sweep = only((tmp / "logs/train/multiruns").iterdir())
    ids = set()
    jobs = (
        ("0", "grpo", "grpo/clip_frac", 4, "GRPO"),
        ("1", "ppo", "ppo/value_loss", 1, "PPO"),
        ("2", "rloo", "rloo/clip_frac", 4, "GRPO"),
        ("3", "reinforce_pp", "reinforce_pp/advantage_abs_mean", 1, "GRPO"),
    )
    for job, name, prefix, n, target in jobs:
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["algorithm"] == name and summary["seed"] == 1 and summary["steps"] == 2
        wb = read_offline_run(only((sweep / job / "wandb").glob("offline-run-*")))
        assert wb["group"] == sweep.name and wb["tags"] == [name] and wb["config"]["seed"] == 1
        assert wb["config"]["algorithm"]["_target_"].endswith(target) and wb["config"]["rollout"]["n"] == n
        assert prefix in wb["summary"] and "perf/update_s" in wb["summary"] and "train/completions" in wb["summary"]
        assert wb["summary"]["train/completions"] == 2 * 16 * n  # smoke: 16 prompts per step, n completions each
        ids.add(wb["id"])
    assert len(ids) == 4  # one W&B run per job


@pytest.mark.parametrize(
    "override,message",
    [
        ("algorithm=nope", "Could not find 'algorithm/nope'"),
        ("algorithm.beta=-1", "algorithm.beta must be a number > 0"),
        ("algorithm.initial_value=mean", "algorithm.initial_value must be one of"),
        ("data.task.op=div", "data.task.op must be one of"),
        ("model.name_or_path=/no/such/model", "does not exist"),
    ],
)
def test_bad_overrides_fail_with_a_clear_message(repo_root, tmp_path, override, message):
    proc = run(repo_root, tmp_path, override, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_math_data_from_local_files_with_a_saved_model(repo_root, math_data_dir, tmp_path):
    """data=gsm8k + reward=math_verify on any saved model: local files through the hub code path."""
    import string

    from tbrm.models.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(string.printable)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "run.py",
        "data=gsm8k",
        "reward=math_verify",
        f"model.name_or_path={tmp_path / 'model'}",
        f"data.task.train.path={math_data_dir / 'gsm8k_train.jsonl'}",
        f"data.task.validation.path={math_data_dir / 'gsm8k_test.jsonl'}",
        "data.task.validation.limit=16",
        "data.batch_size=4",
        "data.val_batch_size=16",
        "rollout.max_new_tokens=8",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "logger=csv",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["policy_path"] == str(tmp_path / "model")
    config = yaml.safe_load((out / ".hydra/config.yaml").read_text())
    assert config["data"]["task"]["train"]["path"].endswith("gsm8k_train.jsonl")
    rows = list(csv.DictReader(open(out / "csv/metrics.csv")))
    assert max(float(r["train/completions"]) for r in rows if r.get("train/completions")) == 8  # 2 steps x 4


def test_eval_task_over_every_local_benchmark_file_on_the_embedded_model(first_run, repo_root, math_data_dir):
    """mode=eval on the embedded default (its cached warm start) over every local benchmark file:
    the table printed, eval.json / eval.md written, a W&B offline run logged. Rows are limited and
    AIME24 / AMC23 take 4 samples instead of 32, for time; the protocol is the default one."""
    tmp, _ = first_run
    local = ["aime24", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k_test", "svamp"]
    proc = run(
        repo_root,
        tmp,
        "mode=eval",
        f"eval.local_dir={math_data_dir}",
        "~eval.benchmarks.aime25",  # no local copy
        "+data/source@eval.benchmarks.svamp=svamp",
        *[f"eval.benchmarks.{name}.limit=3" for name in local],
        "eval.samples.aime24=4",
        "eval.samples.amc23=4",
        "eval.k=[2,4]",
    )
    out = only((tmp / "logs/eval/runs").iterdir())
    results = json.loads((out / "eval.json").read_text())["results"]
    assert list(results) == [*local, "mean"] and results["mean"]["problems"] == 3 * len(local)
    assert set(results["amc23"]) == {"avg@1", "avg@4", "pass@2", "pass@4", "score", "problems", "skipped"}
    assert set(results["olympiadbench"]) == {"avg@1", "score", "problems", "skipped"}  # greedy only
    assert "| benchmark | problems | avg@1 | avg@4 | pass@2 | pass@4 | score |" in proc.stdout
    assert (out / "eval.md").read_text().strip() in proc.stdout and "| svamp | 3 |" in proc.stdout
    wb = read_offline_run(only((out / "wandb").glob("offline-run-*")))
    assert wb["summary"]["eval/math500/problems"] == 3 and "eval/mean/score" in wb["summary"]
    assert "eval" in wb["tags"]


def test_a_runs_dumped_rollouts_train_another_run_without_generation(first_run, repo_root):
    """The first run dumped its 4 steps x 16 rollouts; a TBRM run trains on them and generates nothing."""
    tmp, out = first_run
    shards = sorted((out / "rollouts").iterdir())
    assert [p.name for p in shards] == [f"rollouts-step{s:06d}-rank0.jsonl" for s in range(4)]
    rows = [json.loads(line) for line in shards[0].read_text().splitlines()]
    assert len(rows) == 16 and rows[0]["step"] == 0 and rows[0]["policy"].endswith(tuple("0123456789abcdef"))
    assert all(len(r["behavior_logprobs"]) == len(r["completion_ids"]) > 0 for r in rows)
    dest = tmp / "from_dump"
    run(repo_root, tmp, "data=trajectories", f"data.path={out / 'rollouts'}", f"hydra.run.dir={dest}")
    metrics = list(csv.DictReader(open(dest / "csv/metrics.csv")))
    generated = [float(r["train/generated"]) for r in metrics if r.get("train/generated")]
    assert len(generated) == 4 and set(generated) == {0.0}
    assert json.loads((dest / "summary.json").read_text())["steps"] == 4


def test_task_generate_writes_trajectories_grpo_trains_on(first_run, repo_root):
    """mode=generate samples groups with rewards and behaviour log-probs; GRPO trains on the file."""
    tmp, _ = first_run
    gen = tmp / "generate"
    proc = run(repo_root, tmp, "mode=generate", "generate.n=2", "generate.limit=16", "generate.batch_size=8",
               f"hydra.run.dir={gen}")  # fmt: skip
    assert "generating" in proc.stderr and "wrote 32 trajectories" in proc.stderr + proc.stdout
    rows = [json.loads(line) for p in sorted((gen / "trajectories").iterdir()) for line in p.read_text().splitlines()]
    assert len(rows) == 32 and rows[0]["prompt"] == rows[1]["prompt"] != rows[2]["prompt"]
    assert {r["reward"] for r in rows} <= {0.0, 1.0} and rows[0]["temperature"] == 1.0
    dest = tmp / "grpo_from_file"
    run(repo_root, tmp, "data=trajectories", f"data.path={gen / 'trajectories'}", "algorithm=grpo", "rollout.n=2",
        "data.batch_size=8", f"hydra.run.dir={dest}")  # fmt: skip
    metrics = [r for r in csv.DictReader(open(dest / "csv/metrics.csv")) if r.get("train/generated")]
    assert [float(r["train/generated"]) for r in metrics] == [0.0] * 4
    assert float(metrics[0]["grpo/ratio_mean"]) == pytest.approx(1.0, abs=1e-3)  # stored = current policy
    bad = run(repo_root, tmp, "data=trajectories", f"data.path={gen / 'trajectories'}", "algorithm=grpo",
              "rollout.n=4", "data.batch_size=8", check=False)  # fmt: skip
    assert bad.returncode != 0 and "one prompt's group of 4" in bad.stderr


def _dapo_copy(math_data_dir: Path, path: Path, rows: int = 16) -> Path:
    """A DAPO-Math-17k-shaped file (chat prompt in DAPO's instruction wrapper, nested answer, each
    problem twice as on the hub) built from MATH-500 problems."""
    wrapper = (
        "Solve the following math problem step by step. The last line of your response should be of the form "
        "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
        'Remember to put your answer on its own line after "Answer:".'
    )
    out = []
    for line in (math_data_dir / "math500.jsonl").read_text().splitlines()[:rows]:
        row = json.loads(line)
        prompt = [{"role": "user", "content": wrapper.format(row["problem"])}]
        out.append({"prompt": prompt, "reward_model": {"ground_truth": row["answer"], "style": "rule"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in out + out))
    return path


def test_paper_presets_train_and_evaluate_on_a_local_qwen2_model(repo_root, math_data_dir, qwen2_model_dir, tmp_path):
    """Each paper preset, as composed, on a random-init Qwen2 model saved with save_pretrained: 2 RL
    steps and the benchmark evaluation during training, on CPU (bf16 autocast), in one multirun.
    Only the sizes shrink: prompts per step, response length, validation and benchmark rows."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        "experiment=paper/tbrm_n1,paper/tbrm_n4,paper/grpo_n4,paper/ppo_n1",
        "data=dapo17k",  # as the presets say: lets the sweeper check the data overrides below
        f"model.name_or_path={qwen2_model_dir}",
        f"data.task.train.path={_dapo_copy(math_data_dir, tmp_path / 'dapo.jsonl')}",
        f"data.task.validation.path={math_data_dir / 'math500.jsonl'}",
        "data.task.validation.limit=4",
        f"eval.local_dir={math_data_dir}",
        "eval.benchmarks.aime24.limit=3",
        "eval.benchmarks.amc23.limit=3",
        "eval.samples.aime24=4",
        "eval.samples.amc23=4",
        "eval.k=[2,4]",
        "data.batch_size=4",
        "rollout.max_new_tokens=6",
        "update.micro_batch_size=4",
        "trainer.accelerator=cpu",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "logger=csv",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(
        cmd, cwd=repo_root, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    for job, (preset, algorithm, n) in enumerate(
        [("tbrm_n1", "tbrm", 1), ("tbrm_n4", "tbrm", 4), ("grpo_n4", "grpo", 4), ("ppo_n1", "ppo", 1)]
    ):
        out = sweep / str(job)
        config = yaml.safe_load((out / ".hydra/config.yaml").read_text())
        assert preset in config["tags"] and config["trainer"]["precision"] == "bf16-mixed"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["algorithm"] == algorithm
        assert summary["skipped_rows"] == {"train": 0, "validation": 0, "test": 0}
        # the benchmark evaluation after the last step: avg@1 greedy, avg@4 and pass@k sampled
        bench = summary["benchmarks"]["2"]
        assert set(bench) == {"aime24", "amc23", "mean"} and bench["mean"]["problems"] == 6
        assert set(bench["aime24"]) == {"avg@1", "avg@4", "pass@2", "pass@4", "score", "problems", "skipped"}
        rows = list(csv.DictReader(open(out / "csv/metrics.csv")))
        steps = sorted({int(r["step"]) for r in rows if r.get("val/amc23/avg@4")})
        assert steps == [0, 2]  # before training and at the end
        assert max(float(r["train/completions"]) for r in rows if r.get("train/completions")) == 2 * 4 * n
        assert any(r.get("data/skipped_rows/train") == "0.0" for r in rows)
        # the deduplicated DAPO copy: 16 distinct problems, each read twice, prompts in the Qwen-Math format
        assert "16 distinct questions (32 rows read)" in (out / "run.log").read_text()


def test_optuna_hparams_search_runs_trials_and_the_report_reads_them(repo_root, tmp_path):
    from conftest import SMOKE

    from tbrm.report.build import make_report

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    run(repo_root, tmp_path, "hparams_search=tbrm_optuna", "hydra.sweeper.n_trials=2", "data.batch_size=8",
        f"hydra.sweep.dir={sweep}", tiny=SMOKE)  # fmt: skip
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optimizer.lr", "algorithm.beta"} and 0 <= result["best_value"] <= 1
    for job in ("0", "1"):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((sweep / job / ".hydra/overrides.yaml").read_text()))
        assert 1e-5 <= float(overrides["optimizer.lr"]) <= 3e-4 and 0.01 <= float(overrides["algorithm.beta"]) <= 0.5
    report = make_report(sweep, tmp_path / "report", figures=False)
    assert len(report.arms) == 2 and all("optimizer.lr=" in arm.label for arm in report.arms)
