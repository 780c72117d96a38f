"""Train an LLM policy with TBRM (or another objective) on a verifiable task.

    python run.py                                    # TBRM on the embedded default (CPU)
    python run.py algorithm.beta=0.1 seed=1          # override any config value
    python run.py -m seed=0,1,2                      # a Hydra multirun sweep
    python run.py task=sft                           # only build (and cache) the warm start
    python run.py task=eval model.name_or_path=<m>   # per-benchmark table (conf/eval/math.yaml)

Compose the config, instantiate the parts, validate, fit, validate, write summary.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("WANDB_MODE", "offline")  # no W&B server unless the user says otherwise

from tbrm.eval import BenchmarkEvaluation  # noqa: E402
from tbrm.models import load_options, resolve_policy  # noqa: E402
from tbrm.module import RLModule  # noqa: E402
from tbrm.tasks import eval_settings, evaluate, generate  # noqa: E402
from tbrm.utils import build_loggers, finish_loggers, write_summary  # noqa: E402

log = logging.getLogger("tbrm")


def sweep_group() -> str | None:
    """In a multirun, the sweep's folder name groups its jobs in W&B."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def train(cfg: DictConfig) -> float | None:
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)
    objective = instantiate(cfg.algorithm)  # validates the algorithm's hyper-parameters first
    datamodule = instantiate(cfg.data)
    policy_path = resolve_policy(cfg.model, datamodule.task, cfg.data.task, cfg.paths.cache_dir)
    log.info("initial policy: %s", policy_path)
    if cfg.task == "sft":
        report = Path(policy_path) / "warm_start.json"
        if report.exists():
            log.info("warm start report:\n%s", report.read_text())
        return None
    if cfg.task == "eval":
        return evaluate(cfg, policy_path, sweep_group())
    if cfg.task == "generate":
        return generate(cfg, policy_path, datamodule.task)
    if cfg.task != "train":
        raise ValueError(f"task must be one of ['train', 'sft', 'eval', 'generate'] (got {cfg.task!r}).")

    module = RLModule(
        policy_path,
        objective,
        instantiate(cfg.reward),
        rollout=OmegaConf.to_container(cfg.rollout, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        micro_batch_size=cfg.optimizer.micro_batch_size,
        micro_batch_tokens=cfg.optimizer.micro_batch_tokens,
        split_cost_tokens=cfg.optimizer.split_cost_tokens,
        model_options=load_options(cfg.model),
        replay=instantiate(cfg.replay) if cfg.get("replay") else None,
        track_kl_ref=cfg.track_kl_ref,
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg.logger, tags=[*cfg.tags, objective.name], group=sweep_group(), config=config)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    benchmark_eval = None
    if cfg.eval.during_training:
        benchmarks, settings, reward_fn = eval_settings(cfg, list(cfg.eval.during_training))
        benchmark_eval = BenchmarkEvaluation(benchmarks, reward_fn, **settings)
        callbacks.append(benchmark_eval)
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)

    initial = (trainer.validate(module, datamodule=datamodule, verbose=False) or [{}])[0]  # [] when limit_val_batches=0
    log.info("before training: %s", initial)
    skipped = {f"data/skipped_rows/{split}": float(n) for split, n in getattr(datamodule.task, "skipped", {}).items()}
    if hasattr(datamodule, "trajectories"):  # data=trajectories: its rows are read at the first step
        datamodule.trajectories()
        skipped["data/skipped_rows/trajectories"] = float(datamodule.skipped)
    for logger in loggers:
        logger.log_metrics(skipped, step=0)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if module.last_val_step != trainer.global_step:  # the last step had no validation yet
        trainer.validate(module, datamodule=datamodule, verbose=False)
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    log.info("after training: %s", final)

    out = Path(cfg.paths.output_dir)
    module.policy.save_pretrained(out / "policy")  # loadable as model.name_or_path=<out>/policy
    module.tokenizer.save_pretrained(out / "policy")
    summary = write_summary(
        out / "summary.json",
        initial=initial,
        final=final,
        steps=trainer.global_step,
        wall_time_s=time.time() - start,
        algorithm=objective.name,
        seed=cfg.seed,
        policy_path=policy_path,
        skipped_rows={key.rsplit("/", 1)[1]: int(n) for key, n in skipped.items()},
        **({"benchmarks": dict(benchmark_eval.history[-1:])} if benchmark_eval and benchmark_eval.history else {}),
    )
    log.info("summary: %s", json.dumps(summary))
    finish_loggers(loggers)
    return final.get(cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
