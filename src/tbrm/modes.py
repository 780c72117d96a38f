"""What ``run.py`` does besides training: ``mode=eval`` (the benchmark table) and ``mode=generate``
(a trajectory file). Each takes the composed config; Hydra is imported only where they run."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tbrm.distributed import launch_rank, launch_world
from tbrm.eval import evaluate_benchmarks, flatten, format_table, with_local_files
from tbrm.io import write_json, write_text
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.models.policy import load_options
from tbrm.rollout.engine import make_engine
from tbrm.utils import build_loggers, finish_loggers, resolve_device

log = logging.getLogger("tbrm")


def eval_settings(cfg: DictConfig, names: list[str] | None = None) -> tuple[dict, dict, object]:
    """``(benchmarks, settings, reward_fn)`` of ``cfg.eval``: the sources (all, or ``names``),
    the evaluation settings and the scorer."""
    from hydra.utils import instantiate

    settings = OmegaConf.to_container(cfg.eval, resolve=True)
    chosen = settings.pop("benchmarks")
    if names is not None:
        unknown = sorted(set(names) - set(chosen))
        if unknown:
            raise ValueError(
                f"eval.during_training names {unknown}, which are not in eval.benchmarks {sorted(chosen)}."
            )
        chosen = {name: chosen[name] for name in names}
    chosen = with_local_files(chosen, settings.pop("local_dir"))
    settings.pop("during_training")
    if names is not None:  # during training the evaluation runs where the policy is
        settings.pop("device")
    reward_fn = instantiate(settings.pop("reward"))
    return {name: instantiate(source) for name, source in chosen.items()}, settings, reward_fn


def build_engine(cfg: DictConfig, name: str, model, tokenizer, device):
    """The rollout engine ``name`` for ``model`` on ``device``, with ``rollout.vllm``'s settings."""
    options = OmegaConf.to_container(cfg.rollout.vllm, resolve=True) if "vllm" in cfg.rollout else None
    return make_engine(name, model, tokenizer, options, cuda=torch.device(device).type == "cuda")


def evaluate(cfg: DictConfig, policy_path: str, group: str | None = None) -> float:
    """mode=eval: the per-benchmark table of ``cfg.eval`` for the policy, printed, saved and logged."""
    benchmarks, settings, reward_fn = eval_settings(cfg)
    model, tokenizer = load_model_and_tokenizer(policy_path, **load_options(cfg.model, inference=True))
    device = resolve_device(settings.pop("device"))
    model.to(device)
    settings["engine"] = build_engine(cfg, settings.pop("engine"), model, tokenizer, device)
    results = evaluate_benchmarks(
        model, tokenizer, benchmarks, reward_fn, **settings, progress=lambda b: log.info("evaluating %s", b)
    )
    table = format_table(results)
    print(table)
    out = Path(cfg.paths.output_dir)
    write_text(out / "eval.md", table + "\n")
    write_json(out / "eval.json", {"policy": policy_path, "results": results})
    loggers = build_loggers(
        cfg.logger, tags=[*cfg.tags, "eval"], group=group, config=OmegaConf.to_container(cfg, resolve=True)
    )
    for logger in loggers:
        logger.log_metrics(flatten(results), step=0)
    finish_loggers(loggers)
    return results["mean"]["avg@1"] if results else float("nan")


def generate(cfg: DictConfig, policy_path: str, task) -> None:
    """mode=generate: completions for a task split from the policy, written with their rewards as
    trajectory records (``tbrm.data.trajectories.generate_trajectories``). Started as N processes
    (``torchrun``, Slurm tasks), each generates every N-th prompt into shards of its own rank."""
    from hydra.utils import instantiate

    from tbrm.data.trajectories import TrajectoryWriter, generate_trajectories

    settings = OmegaConf.to_container(cfg.generate, resolve=True)
    splits = task.splits()
    split = settings.pop("split")
    if split not in splits or not splits[split]:
        raise ValueError(f"generate.split {split!r} is empty or unknown; use one of {sorted(splits)}.")
    rank, world = launch_rank(), launch_world()
    records = splits[split][: settings.pop("limit")][rank::world]
    model, tokenizer = load_model_and_tokenizer(policy_path, **load_options(cfg.model, inference=True))
    device = resolve_device(settings.pop("device"))
    model.to(device)
    settings["engine"] = build_engine(cfg, settings.pop("engine"), model, tokenizer, device)
    writer = TrajectoryWriter(settings.pop("dirpath"), settings.pop("format"), rank=rank)
    written, accuracy = generate_trajectories(
        model, tokenizer, records, instantiate(cfg.reward), writer, policy=str(policy_path), **settings
    )
    log.info("wrote %d trajectories (accuracy %.3f) to %s", written, accuracy, writer.dirpath)
