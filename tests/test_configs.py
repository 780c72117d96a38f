"""Every config composes and instantiates; invalid values fail when the config is instantiated."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(tmp_path, overrides=()):
    """The job config as run.py sees it, with Hydra's runtime config set (``${hydra:...}`` resolves)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)  # now: ${hydra:...} reads the latest composed config
    return cfg


def test_default_config_resolves(tmp_path):
    cfg = compose_cfg(tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.algorithm._target_ == "tbrm.objectives.TBRM"
    assert cfg.rollout.n == 1 and cfg.trainer.accelerator == "cpu"
    assert set(cfg.logger) == {"wandb", "csv"}


@pytest.mark.parametrize(
    "group",
    [
        "algorithm",
        "method",
        "model",
        "data",
        "rollout",
        "reward",
        "optimizer",
        "scheduler",
        "update",
        "trainer",
        "callbacks",
        "experiment",
        "replay",
    ],
)
def test_every_option_of_every_group_composes_and_instantiates(tmp_path, group):
    (tmp_path / "t.jsonl").write_text('{"prompt": "1*2=", "completion": "2", "answer": "2", "reward": 1}\n')
    extra = {("data", "trajectories"): [f"data.path={tmp_path / 't.jsonl'}"]}
    for option in options(group):
        cfg = compose_cfg(tmp_path, [f"{group}={option}", *extra.get((group, option), [])])
        objective = instantiate(cfg.algorithm)
        assert objective.beta >= 0 and objective.name in options("algorithm")
        datamodule = instantiate(cfg.data)
        assert datamodule.batch_size >= 1
        reward = instantiate(cfg.reward)
        assert reward(["#### 12"], ["12"]) == [1.0]
        if cfg.trainer.accelerator == "cpu":
            trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
            assert trainer.max_steps == cfg.trainer.max_steps
        for cb in (cfg.callbacks or {}).values():
            assert instantiate(cb) is not None
        if cfg.get("replay"):
            assert 0 <= instantiate(cfg.replay).fraction < 1


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


def test_every_algorithm_alone_gets_its_own_method_at_a_fair_budget(tmp_path):
    """algorithm=<name> alone selects method/<name>.yaml: 128 completions per step, its own lr."""
    for name in options("algorithm"):
        cfg = compose_cfg(tmp_path, [f"algorithm={name}"])
        objective = instantiate(cfg.algorithm)
        assert objective.name == name and cfg.data.batch_size * cfg.rollout.n == 128
        assert getattr(objective, "group_size", cfg.rollout.n) == cfg.rollout.n
        method = OmegaConf.load(CONF / "method" / f"{name}.yaml")
        assert (cfg.rollout.n, cfg.optimizer.lr) == (method.rollout.n, method.optimizer.lr)
    assert compose_cfg(tmp_path, ["algorithm=grpo"]).rollout.n == 4  # GRPO's groups of 4
    assert compose_cfg(tmp_path, ["algorithm=grpo"]).optimizer.lr == 3e-5  # its own tuned lr
    assert compose_cfg(tmp_path, ["algorithm=grpo", "optimizer.lr=1e-5"]).optimizer.lr == 1e-5
    cfg = compose_cfg(tmp_path, ["algorithm=grpo", "rollout.n=8", "algorithm.loss_agg_mode=seq-mean-token-sum-norm"])
    objective = instantiate(cfg.algorithm)
    assert objective.group_size == 8 and objective.norm_length == cfg.rollout.max_new_tokens


def test_algorithm_files_hold_only_their_objective_and_methods_hold_the_pairings():
    import dataclasses

    from hydra.utils import get_class

    for name in options("algorithm"):
        text = (CONF / "algorithm" / f"{name}.yaml").read_text()
        assert "_global_" not in text, name
        cfg = OmegaConf.load(CONF / "algorithm" / f"{name}.yaml")
        keys = set(cfg) - {"_target_", "defaults"}
        target = cfg.get("_target_") or OmegaConf.load(CONF / "algorithm" / f"{cfg.defaults[0]}.yaml")._target_
        fields = {f.name for f in dataclasses.fields(get_class(target))}
        assert keys <= fields, (name, keys - fields)
    for method in options("method"):
        cfg = OmegaConf.load(CONF / "method" / f"{method}.yaml")
        assert set(cfg) <= {"defaults", "rollout", "data", "optimizer"}, method
    assert {m for m in options("method") if "_n" not in m} == set(options("algorithm"))


def test_old_spellings_name_the_new_setting():
    from tbrm.settings import renamed_overrides

    assert renamed_overrides(["task=eval", "optimizer.micro_batch_size=4", "+algorithm.ppo_epochs=2", "seed=1"]) == [
        "task is now mode: use mode=eval",
        "optimizer.micro_batch_size is now update.micro_batch_size: use update.micro_batch_size=4",
        "algorithm.ppo_epochs is now algorithm.epochs: use +algorithm.epochs=2",
    ]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["algorithm.beta=-0.5"], "algorithm.beta"),
        (["algorithm.beta=0"], "algorithm.beta"),
        (["algorithm.initial_value=mean"], "initial_value"),
        (["data.batch_size=0"], "batch_size"),
        (["data.task.op=pow"], "data.task.op"),
        (["algorithm=grpo", "rollout.n=1"], "at least 2 completions per prompt"),
        (["algorithm=rloo", "rollout.n=1"], "RLOO needs at least 2 completions per prompt"),
        (["algorithm=reinforce_pp", "algorithm.clip_ratio_c=0.5"], "clip_ratio_c must be a number > 1"),
        (["algorithm=grpo", "algorithm.loss_agg_mode=sum"], "loss_agg_mode must be one of"),
        (["algorithm=grpo", "algorithm.epsilon=0"], "algorithm.epsilon must be a number > 0"),
        (["algorithm=grpo", "algorithm.beta=-0.1"], "algorithm.beta must be a number >= 0"),
        (["algorithm=ppo", "algorithm.epsilon=-1"], "algorithm.epsilon must be a number > 0"),
        (["algorithm=ppo", "algorithm.beta=-0.1"], "algorithm.beta must be a number >= 0"),
        (["algorithm=ppo", "algorithm.loss_agg_mode=mean"], "loss_agg_mode must be one of"),
        (["data=trajectories"], "needs data.path"),
        (["data=trajectories", "data.path=x.jsonl", "algorithm=grpo", "data.batch_size=6"], "multiple of the group"),
    ],
)
def test_invalid_values_fail_at_instantiation(tmp_path, overrides, match):
    cfg = compose_cfg(tmp_path, overrides)
    with pytest.raises(Exception, match=match):
        instantiate(cfg.algorithm)
        instantiate(cfg.data)


PAPER = {  # arXiv 2505.15311, Sec. 4.1 and App. G: algorithm, n, lr, beta
    "tbrm_n1": ("tbrm.objectives.TBRM", 1, 2.5e-6, 0.002),
    "tbrm_n4": ("tbrm.objectives.TBRM", 4, 2.5e-6, 0.002),
    "grpo_n4": ("tbrm.objectives.GRPO", 4, 1e-6, 0.001),
    "ppo_n1": ("tbrm.objectives.PPO", 1, 1e-6, 0.001),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_presets_carry_the_papers_hyper_parameters(tmp_path, preset):
    target, n, lr, beta = PAPER[preset]
    cfg = compose_cfg(tmp_path, [f"experiment=paper/{preset}"])
    assert cfg.algorithm._target_ == target and cfg.algorithm.beta == beta
    assert cfg.rollout.n == n and cfg.optimizer.lr == lr and cfg.data.batch_size == 128
    assert (cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.trainer.max_steps) == (1.0, 2048, 760)
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-Math-1.5B" and cfg.model.attn_implementation == "sdpa"
    assert cfg.model.inference_dtype == "bfloat16" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.task.train.name == "BytedTsinghua-SIA/DAPO-Math-17k" and cfg.data.task.train.dedupe
    assert cfg.data.task.template == "qwen_math" and cfg.eval.template == "qwen_math"
    assert cfg.reward._target_ == "tbrm.rewards.math_verify_reward"
    assert (cfg.scheduler.warmup_steps, cfg.scheduler.min_lr_ratio) == (0, 1.0)  # constant lr
    objective = instantiate(cfg.algorithm)
    if objective.name == "tbrm":
        assert objective.initial_value == "raw"
    if objective.name == "ppo":
        assert (cfg.algorithm.critic_lr, cfg.algorithm.entropy_coef, cfg.algorithm.epsilon) == (1e-5, 0.001, 0.2)
    if objective.name == "grpo":
        assert objective.group_size == 4 and cfg.algorithm.epsilon == 0.2
    # the 7B model and a local copy of the weights are one override away
    cfg = compose_cfg(tmp_path, [f"experiment=paper/{preset}", "model=qwen2_5_math_7b", "model.name_or_path=/m"])
    assert cfg.model.name_or_path == "/m" and cfg.data.task.tokenizer == "/m" and cfg.optimizer.lr == lr


def test_eval_protocol_is_the_papers(tmp_path):
    """avg@32 at temperature 1.0 on AIME24 / AIME25 / AMC23, greedy avg@1 on the rest."""
    cfg = compose_cfg(tmp_path)
    assert list(cfg.eval.benchmarks) == [
        "aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k_test"
    ]  # fmt: skip
    assert cfg.eval.n_samples == 0 and dict(cfg.eval.samples) == {"aime24": 32, "aime25": 32, "amc23": 32}
    assert cfg.eval.reward._target_ == "tbrm.rewards.math_verify_reward" and cfg.eval.template == "qwen_math"
    svamp = compose_cfg(tmp_path, ["+data/source@eval.benchmarks.svamp=svamp"]).eval.benchmarks.svamp
    assert svamp.name == "ChilleD/SVAMP"


def sweep_jobs(cfg) -> list[list[str]]:
    """The jobs an experiment's ``hydra.sweeper.params`` expand to (the basic sweeper's product)."""
    import itertools

    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return [[f"{k}={v}" for k, v in zip(params, combo, strict=True)] for combo in itertools.product(*params.values())]


def composed_sweep(tmp_path, experiment: str) -> list:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep_cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return [compose_cfg(tmp_path, [f"experiment={experiment}", *job]) for job in sweep_jobs(sweep_cfg)]


def test_kl_ablation_sweeps_each_methods_own_beta_grid_over_three_seeds(tmp_path):
    jobs = composed_sweep(tmp_path, "kl_ablation")
    assert len(jobs) == 36
    grid = {}
    for cfg in jobs:
        objective = instantiate(cfg.algorithm)
        grid.setdefault((objective.name, cfg.rollout.n), set()).add(objective.beta)
        assert cfg.track_kl_ref and cfg.rollout.n * cfg.data.batch_size == 128
    assert grid == {
        ("tbrm", 1): {0.02, 0.05, 0.1, 0.2},
        ("grpo", 4): {0.0, 0.01, 0.04, 0.1},
        ("ppo", 1): {0.0, 0.01, 0.05, 0.2},
    }
    assert {cfg.seed for cfg in jobs} == {0, 1, 2}


def test_algo_comparison_and_rollouts_ablation_sweeps(tmp_path):
    jobs = composed_sweep(tmp_path, "algo_comparison")
    arms = sorted({(instantiate(c.algorithm).name, c.rollout.n, c.data.batch_size) for c in jobs})
    assert arms == [("grpo", 4, 32), ("ppo", 1, 128), ("tbrm", 1, 128), ("tbrm", 4, 32)] and len(jobs) == 12
    jobs = composed_sweep(tmp_path, "rollouts_ablation")
    assert sorted({(c.algorithm._target_, c.rollout.n) for c in jobs}) == [
        ("tbrm.objectives.TBRM", n) for n in (1, 2, 4, 8)
    ]
    assert len(jobs) == 12 and {c.data.batch_size for c in jobs} == {128}


def test_kl_ablation_level_outside_the_grid_fails_clearly(tmp_path):
    cfg = compose_cfg(tmp_path, ["experiment=kl_ablation", "kl_ablation.level=9"])
    with pytest.raises(Exception, match="beta"):
        instantiate(cfg.algorithm)


def test_hparams_search_composes_the_optuna_sweeper(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=tbrm_optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "algorithm.beta"}
    assert cfg.optimized_metric == "val/accuracy_sampled"


def test_data_parallel_trainers_shard_the_data_themselves(tmp_path):
    for name, strategy in (("ddp", "DDPStrategy"), ("ddp_cpu", "DDPStrategy"), ("fsdp", "fsdp_strategy"),
                           ("fsdp_cpu", "fsdp_strategy")):  # fmt: skip
        cfg = compose_cfg(tmp_path, [f"trainer={name}"])
        assert cfg.trainer.strategy._target_.endswith(strategy) and cfg.trainer.use_distributed_sampler is False
        assert cfg.trainer.devices * cfg.trainer.num_nodes > 1
    gpu = compose_cfg(tmp_path, ["trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2"])
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.strategy.devices == 8
    strategy = instantiate(gpu.trainer.strategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (16, 1)  # every rank shards the data
