"""Train an LLM policy with TBRM (or another objective) on a verifiable task.

    python run.py                                    # TBRM on the embedded default (CPU)
    python run.py algorithm.beta=0.1 seed=1          # override any config value
    python run.py -m seed=0,1,2                      # a Hydra multirun sweep
    python run.py algorithm=grpo                     # GRPO with its own pairing (conf/method/grpo.yaml)
    python run.py mode=sft                           # only build (and cache) the warm start
    python run.py mode=eval model.name_or_path=<m>   # per-benchmark table (conf/eval/math.yaml)
    python run.py ckpt_path=<run>/checkpoints/last.ckpt   # resume that run, in its folder, exactly

Check the config, compose and instantiate the parts, validate, fit, validate, write summary.json.
A signal (SIGTERM, SIGINT) stops training at a step boundary with a checkpoint and exits 128 + its
number (``tbrm.interrupt``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
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
from tbrm.interrupt import GUARD, StopOnSignal, remember_failure, run_main  # noqa: E402
from tbrm.models.policy import load_options, resolve_policy  # noqa: E402
from tbrm.modes import eval_settings, evaluate, generate  # noqa: E402
from tbrm.module import RLModule  # noqa: E402
from tbrm.resume import Resume  # noqa: E402
from tbrm.settings import check_config, check_launch, renamed_overrides  # noqa: E402
from tbrm.utils import build_loggers, finish_loggers, write_summary  # noqa: E402

log = logging.getLogger("tbrm")


def sweep_group() -> str | None:
    """In a multirun, the sweep's folder name groups its jobs in W&B."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def train(cfg: DictConfig) -> float | None:
    GUARD.check()  # an earlier job of this multirun was interrupted: do not start another
    GUARD.install()
    start = time.time()
    config = OmegaConf.to_container(cfg, resolve=True)
    check_config(config)  # bad values fail here, before any work
    hc = HydraConfig.get()  # a sweep's jobs run data-parallel only as Slurm jobs
    check_launch(config["trainer"], hc.mode == RunMode.MULTIRUN, str(hc.launcher.get("_target_", "")))
    out = Path(cfg.paths.output_dir)
    resume = Resume.prepare(cfg.ckpt_path, out) if cfg.mode == "train" else None  # a bad ckpt_path fails here
    L.seed_everything(cfg.seed, workers=True)
    objective = instantiate(cfg.algorithm)  # validates the algorithm's hyper-parameters first
    datamodule = instantiate(cfg.data)
    policy_path = resolve_policy(cfg.model, datamodule.task, cfg.data.task, cfg.paths.cache_dir)
    log.info("initial policy: %s", policy_path)
    if cfg.mode == "sft":
        report = Path(policy_path) / "warm_start.json"
        if report.exists():
            log.info("warm start report:\n%s", report.read_text())
        return None
    if cfg.mode == "eval":
        return evaluate(cfg, policy_path, sweep_group())
    if cfg.mode == "generate":
        return generate(cfg, policy_path, datamodule.task)

    module = RLModule(
        policy_path,
        objective,
        instantiate(cfg.reward),
        rollout=OmegaConf.to_container(cfg.rollout, resolve=True),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        update=OmegaConf.to_container(cfg["update"], resolve=True),  # cfg.update is DictConfig.update
        model_options=load_options(cfg.model),
        replay=instantiate(cfg.replay) if cfg.get("replay") else None,
        track_kl_ref=cfg.track_kl_ref,
        **cfg.guard,
    )
    module.started = start
    tags, ckpt = [*cfg.tags, objective.name], resume.checkpoint
    loggers = build_loggers(cfg.logger, tags=tags, group=sweep_group(), config=config, **resume.logger_options())
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()] + [StopOnSignal(out / "checkpoints")]
    benchmark_eval = None
    if cfg.eval.during_training:
        benchmarks, settings, reward_fn = eval_settings(cfg, list(cfg.eval.during_training))
        benchmark_eval = BenchmarkEvaluation(benchmarks, reward_fn, **settings)
        callbacks.append(benchmark_eval)
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)

    if ckpt is None:  # a resumed run has its first validation and step-0 rows from the run it continues
        module.initial_metrics = (trainer.validate(module, datamodule=datamodule, verbose=False) or [{}])[0]
        log.info("before training: %s", module.initial_metrics)  # [{}] above when limit_val_batches=0
    skipped = datamodule.skipped_rows()
    for logger in loggers if ckpt is None else []:
        logger.log_metrics({f"data/skipped_rows/{split}": float(n) for split, n in skipped.items()}, step=0)
    if ckpt is not None:
        log.info("resuming from %s (step %d) in %s", ckpt, resume.step, out)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    if module.last_val_step != trainer.global_step:  # the last step had no validation yet
        trainer.validate(module, datamodule=datamodule, verbose=False)
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    log.info("after training: %s", final)
    module.save_policy(out / "policy")  # loadable as model.name_or_path=<out>/policy
    if not trainer.is_global_zero:  # the other data-parallel ranks hold the same policy: rank zero writes
        return final.get(cfg.optimized_metric)
    summary = write_summary(
        out / "summary.json",
        initial=module.initial_metrics,
        final=final,
        steps=trainer.global_step,
        wall_time_s=module.wall_time_s,
        algorithm=objective.name,
        seed=cfg.seed,
        policy_path=policy_path,
        skipped_rows=skipped,
        data_parallel=module.data_parallel,
        **({"benchmarks": dict(benchmark_eval.history[-1:])} if benchmark_eval and benchmark_eval.history else {}),
    )
    log.info("summary: %s", json.dumps(summary))
    finish_loggers(loggers)
    return final.get(cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@remember_failure
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    if renamed := renamed_overrides(sys.argv[1:]):  # an old spelling: say the new one before Hydra's error
        sys.exit("run.py: " + "; ".join(renamed) + ".")
    run_main(main)
