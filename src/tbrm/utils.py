"""Small run utilities: memory, loggers, the run summary."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

from tbrm.distributed import launch_rank
from tbrm.io import write_json


def resolve_device(device: str = "auto") -> str:
    """``auto``: ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no GPU is visible; use auto or cpu.")
    return device


def peak_mem_gb(device: torch.device | str = "cpu") -> float:
    """Peak memory in GB: torch's max allocated on a CUDA device, the process's max RSS on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1e9 if sys.platform == "darwin" else 1e6)


def write_summary(path: str | Path, *, initial: dict, final: dict, steps: int, wall_time_s: float, **extra) -> dict:
    """Write ``summary.json``: validation metrics before and after training, steps, time, memory."""
    keys = ("val/accuracy", "val/accuracy_sampled")
    summary = {
        "initial": {k: float(initial[k]) for k in keys if k in initial},
        "final": {k: float(final[k]) for k in keys if k in final},
        "steps": int(steps),
        "wall_time_s": float(wall_time_s),
        "peak_mem_gb": peak_mem_gb("cuda" if torch.cuda.is_available() else "cpu"),
        **extra,
    }
    write_json(path, summary)
    return summary


def build_loggers(
    logger_cfg,
    *,
    tags: list[str],
    group: str | None,
    config: dict,
    wandb_id: str | None = None,
    resume: bool = False,
    csv_rows: list[dict] | None = None,
) -> list:
    """Instantiate the configured Lightning loggers and give each the full resolved config.

    W&B runs get the algorithm (and any user tags) as tags, the sweep as their group and
    ``wandb_id`` as their id (``resume``: continue that run, ``resume="allow"``). A CSV logger starts
    its file anew; ``csv_rows`` (a resumed run's rows from before its checkpoint) are written first.
    An offline W&B run gets them too: wandb keeps the newest 32 KiB of an offline run in memory, so
    a killed process loses them, and the resumed part is made whole from the CSV
    (``tbrm.wandb_offline.read_offline_runs`` reads the parts as one run).
    """
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = []
    for cfg in (logger_cfg or {}).values():
        extra = {}
        if "wandb" in str(cfg.get("_target_", "")).lower():
            extra = {"tags": tags, "group": group, "id": wandb_id, **({"resume": "allow"} if resume else {})}
        logger = instantiate(cfg, **extra)
        logger.log_hyperparams(config)
        if not csv_rows or launch_rank() != 0:  # Lightning's loggers write from rank zero only
            loggers.append(logger)
            continue
        offline_wandb = isinstance(logger, WandbLogger) and logger.experiment.settings.mode == "offline"
        if isinstance(logger, CSVLogger) or offline_wandb:
            for row in csv_rows:
                logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
            logger.save()
        loggers.append(logger)
    return loggers


def finish_loggers(loggers: list) -> None:
    """Close W&B runs so the next job of a multirun starts a run of its own."""
    for logger in loggers:
        logger.finalize("success")
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
