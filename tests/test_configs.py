"""Every config composes and instantiates; invalid values fail when the config is instantiated."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(tmp_path, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", *overrides]
        )


def test_default_config_resolves(tmp_path):
    cfg = compose_cfg(tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.algorithm._target_ == "tbrm.objectives.TBRM"
    assert cfg.rollout.n == 1 and cfg.trainer.accelerator == "cpu"
    assert set(cfg.logger) == {"wandb", "csv"}


@pytest.mark.parametrize(
    "group", ["algorithm", "model", "data", "rollout", "reward", "optimizer", "trainer", "callbacks", "experiment"]
)
def test_every_option_of_every_group_composes_and_instantiates(tmp_path, group):
    for option in options(group):
        cfg = compose_cfg(tmp_path, [f"{group}={option}"])
        objective = instantiate(cfg.algorithm)
        assert objective.beta >= 0 and objective.name in ("tbrm", "grpo", "ppo")
        datamodule = instantiate(cfg.data)
        assert datamodule.batch_size >= 1
        reward = instantiate(cfg.reward)
        assert reward(["#### 12"], ["12"]) == [1.0]
        if cfg.trainer.accelerator == "cpu":
            trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
            assert trainer.max_steps == cfg.trainer.max_steps
        for cb in (cfg.callbacks or {}).values():
            assert instantiate(cb) is not None


def test_loggers_instantiate_offline(tmp_path):
    cfg = compose_cfg(tmp_path)
    from tbrm.utils import build_loggers, finish_loggers

    loggers = build_loggers(cfg.logger, tags=["tbrm"], group=None, config={"seed": 0})
    assert {type(lg).__name__ for lg in loggers} == {"WandbLogger", "CSVLogger"}
    finish_loggers(loggers)
    assert (tmp_path / "csv/hparams.yaml").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_gpu_trainer_config_asks_for_bf16(tmp_path):
    cfg = compose_cfg(tmp_path, ["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_steps == compose_cfg(tmp_path).trainer.max_steps  # inherits the rest


def test_algorithm_groups_set_a_fair_budget(tmp_path):
    """Every algorithm sees 128 completions per step by default; GRPO as 32 groups of 4."""
    for name, n in (("tbrm", 1), ("grpo", 4), ("ppo", 1)):
        cfg = compose_cfg(tmp_path, [f"algorithm={name}"])
        assert cfg.rollout.n == n and cfg.data.batch_size * n == 128
        objective = instantiate(cfg.algorithm)
        assert getattr(objective, "group_size", n) == n
    assert compose_cfg(tmp_path, ["algorithm=grpo"]).optimizer.lr == 3e-5  # its own tuned lr
    assert compose_cfg(tmp_path, ["algorithm=grpo", "optimizer.lr=1e-5"]).optimizer.lr == 1e-5
    cfg = compose_cfg(tmp_path, ["algorithm=grpo", "rollout.n=8", "algorithm.loss_agg_mode=seq-mean-token-sum-norm"])
    objective = instantiate(cfg.algorithm)
    assert objective.group_size == 8 and objective.norm_length == cfg.rollout.max_new_tokens


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["algorithm.beta=-0.5"], "algorithm.beta"),
        (["algorithm.beta=0"], "algorithm.beta"),
        (["algorithm.initial_value=mean"], "initial_value"),
        (["data.batch_size=0"], "batch_size"),
        (["data.task.op=pow"], "data.task.op"),
        (["algorithm=grpo", "rollout.n=1"], "at least 2 completions per prompt"),
        (["algorithm=grpo", "algorithm.loss_agg_mode=sum"], "loss_agg_mode must be one of"),
        (["algorithm=grpo", "algorithm.epsilon=0"], "algorithm.epsilon must be a number > 0"),
        (["algorithm=grpo", "algorithm.beta=-0.1"], "algorithm.beta must be a number >= 0"),
        (["algorithm=ppo", "algorithm.epsilon=-1"], "algorithm.epsilon must be a number > 0"),
        (["algorithm=ppo", "algorithm.beta=-0.1"], "algorithm.beta must be a number >= 0"),
        (["algorithm=ppo", "algorithm.loss_agg_mode=mean"], "loss_agg_mode must be one of"),
    ],
)
def test_invalid_values_fail_at_instantiation(tmp_path, overrides, match):
    cfg = compose_cfg(tmp_path, overrides)
    with pytest.raises(Exception, match=match):
        instantiate(cfg.algorithm)
        instantiate(cfg.data)
