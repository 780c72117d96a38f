"""Bad sampling, optimizer, trainer and guard settings fail when the config is checked, before any
model is loaded or warm-started, naming the key and the valid range."""

from __future__ import annotations

import time

import pytest
from conftest import ROOT, TINY, run_py
from test_configs import compose_cfg

from tbrm.settings import check_config


def checked(tmp_path, *overrides):
    from omegaconf import OmegaConf

    check_config(OmegaConf.to_container(compose_cfg(tmp_path, overrides), resolve=True))


def test_every_shipped_config_passes(tmp_path):
    checked(tmp_path)
    checked(tmp_path, "experiment=smoke")
    checked(tmp_path, "experiment=paper/tbrm_n1")
    checked(tmp_path, "algorithm=grpo")


@pytest.mark.parametrize(
    "override,message",
    [
        ("rollout.temperature=-1", r"rollout.temperature must be a number > 0 \(got -1\)"),
        ("rollout.temperature=0", r"rollout.temperature must be a number > 0 \(got 0\)"),
        ("rollout.top_p=0", r"rollout.top_p must be a number in \(0, 1\] \(got 0\)"),
        ("rollout.top_p=2", r"rollout.top_p must be a number in \(0, 1\] \(got 2\)"),
        ("rollout.n=0", r"rollout.n must be an integer >= 1 \(got 0\)"),
        ("rollout.max_new_tokens=0", r"rollout.max_new_tokens must be an integer >= 1 \(got 0\)"),
        (
            "+rollout.temprature=0.5",
            "rollout.temprature is not a setting of rollout/; did you mean rollout.temperature?",
        ),
        ("rollout.engine=fast", "rollout.engine must be one of"),
        ("optimizer.lr=-1", r"optimizer.lr must be a number > 0 \(got -1\)"),
        ("scheduler.warmup_steps=-3", r"scheduler.warmup_steps must be an integer >= 0 \(got -3\)"),
        ("scheduler.min_lr_ratio=2", r"scheduler.min_lr_ratio must be a number in \[0, 1\]"),
        ("optimizer.betas=[0.9,1.5]", r"optimizer.betas must be two numbers in \[0, 1\)"),
        ("update.grad_clip=0", r"update.grad_clip must be a number > 0"),
        ("update.micro_batch_size=0", r"update.micro_batch_size must be null or an integer >= 1"),
        ("+optimizer.lrr=1", "optimizer.lrr is not a setting of optimizer/; did you mean optimizer.lr?"),
        ("trainer.max_steps=0", r"trainer.max_steps must be an integer >= 1 \(got 0\)"),
        ("trainer.val_check_interval=0", r"trainer.val_check_interval must be an integer >= 1"),
        ("guard.nonfinite=ignore", r"guard.nonfinite must be one of \['stop', 'skip'\]"),
        ("guard.invalid_reward=nan", r"guard.invalid_reward must be one of \['stop', 'zero'\]"),
        ("rollout.is_correction=tokens", r"rollout.is_correction must be null, token or sequence \(got 'tokens'\)"),
        ("rollout.is_threshold=0.5", r"rollout.is_threshold must be a number >= 1 \(got 0.5\)"),
        ("rollout.is_correction=token", "TBRM has no ratio to correct .* set rollout.is_correction=null"),
        (
            "rollout.vllm.gpu_memory_utilization=1.5",
            r"rollout.vllm.gpu_memory_utilization must be a number in \(0, 1\]",
        ),
        ("rollout.vllm.dtype=fp8", r"rollout.vllm.dtype must be null or one of float32, bfloat16, float16"),
        ("rollout.vllm.max_model_len=0", r"rollout.vllm.max_model_len must be null or an integer >= 1 \(got 0\)"),
        (
            "+rollout.vllm.gpu_memory_utilisation=0.5",
            "rollout.vllm.gpu_memory_utilisation is not a setting of rollout.vllm/; did you mean "
            "rollout.vllm.gpu_memory_utilization?",
        ),
    ],
)
def test_bad_settings_name_the_key_and_the_range(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        checked(tmp_path, override)


def test_is_correction_is_a_setting_of_grpo_and_ppo(tmp_path):
    for algorithm in ("grpo", "ppo", "rloo"):
        checked(tmp_path, f"algorithm={algorithm}", "rollout.is_correction=sequence", "rollout.is_threshold=5")


def test_the_vllm_engine_without_vllm_names_the_install(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"rollout.engine=vllm needs vLLM, which is not installed: pip install"):
        checked(tmp_path, "rollout.engine=vllm")
    with pytest.raises(ValueError, match=r"rollout.engine=vllm needs vLLM"):
        checked(tmp_path, "mode=eval", "rollout.engine=vllm")


def test_eval_and_generate_settings_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match=r"eval.temperature must be a number > 0"):
        checked(tmp_path, "mode=eval", "eval.temperature=0")
    with pytest.raises(ValueError, match=r"generate.n must be an integer >= 1"):
        checked(tmp_path, "mode=generate", "generate.n=0")


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,message",
    [
        ("rollout.temperature=-1", "rollout.temperature must be a number > 0 (got -1)"),
        ("rollout.top_p=0", "rollout.top_p must be a number in (0, 1] (got 0)"),
        ("rollout.n=0", "rollout.n must be an integer >= 1 (got 0)"),
        ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be an integer >= 1 (got 0)"),
        ("optimizer.lr=-1", "optimizer.lr must be a number > 0 (got -1)"),
        ("+rollout.temprature=0.5", "did you mean rollout.temperature?"),
        ("data=gsm8k", "data=MathTask needs a real model, but model.name_or_path is null"),
        ("task=eval", "task is now mode: use mode=eval"),
        ("optimizer.grad_clip=2", "optimizer.grad_clip is now update.grad_clip: use update.grad_clip=2"),
    ],
)
def test_run_py_fails_within_seconds_before_any_warm_start(tmp_path, override, message):
    began = time.time()
    proc = run_py(ROOT, tmp_path, override, check=False, tiny=[] if override.startswith("data=") else TINY)
    assert proc.returncode == 1 and message in proc.stderr
    assert "warm start (SFT)" not in proc.stderr and not (tmp_path / "cache" / "warm_start").exists()
    assert time.time() - began < 60  # interpreter start and imports: about 6 s on 2 cores


def test_each_rank_needs_an_equal_part_of_the_batch():
    from tbrm.settings import check_data_parallel, data_parallel_world

    assert data_parallel_world({"devices": 4, "num_nodes": 2}) == 8
    assert data_parallel_world({"devices": [0, 1]}) == 2 and data_parallel_world({"devices": "auto"}) is None
    ours = {"use_distributed_sampler": False}  # as trainer=ddp and trainer=fsdp set it
    check_data_parallel({"devices": 2, **ours}, {"batch_size": 16})
    with pytest.raises(ValueError, match=r"data.batch_size must be a multiple of the 3 data-parallel ranks"):
        check_data_parallel({"devices": 3, **ours}, {"batch_size": 16})
    with pytest.raises(ValueError, match=r"data.batch_size / data.group_size \(groups per step\) must be"):
        check_data_parallel({"devices": 2, "num_nodes": 1, **ours}, {"batch_size": 12, "group_size": 4})  # 3 groups
    check_data_parallel({"devices": 2, **ours}, {"batch_size": 16, "group_size": 4})  # 4 groups: 2 per rank
    with pytest.raises(ValueError, match=r"trainer.use_distributed_sampler must be false with 2 data-parallel ranks"):
        check_data_parallel({"devices": 2, "strategy": "ddp"}, {"batch_size": 16})  # +trainer.strategy=ddp alone
    check_data_parallel({"devices": 1}, {"batch_size": 15})


def test_a_sweep_of_data_parallel_jobs_runs_only_as_slurm_jobs():
    from tbrm.settings import check_launch

    ddp = {"devices": 2, "num_nodes": 1}
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    with pytest.raises(ValueError, match="= 2 in a multirun with BasicLauncher: a sweep's jobs run data-parallel"):
        check_launch(ddp, True, basic)
    with pytest.raises(ValueError, match="with LocalLauncher"):
        check_launch(ddp, True, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")
    check_launch(ddp, True, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    check_launch(ddp, False, basic)  # one run: Lightning starts its ranks
    check_launch({"devices": 1}, True, basic)
