"""Loading HF models and tokenizers; building and warm-starting the tiny default."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tbrm.models.loading import load_model_and_tokenizer


def resolve_policy(model_cfg: DictConfig, task, task_cfg: DictConfig, cache_dir: str) -> str:
    """The initial policy's source: ``model.name_or_path`` when given, else the cached warm start
    of the tiny default (built now, with a progress bar, when the cache has none)."""
    if model_cfg.get("name_or_path"):
        return str(model_cfg.name_or_path)
    from tbrm.models.warm_start import prepare_warm_start

    plain = OmegaConf.to_container(task_cfg, resolve=True)
    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True)
    sft = OmegaConf.to_container(model_cfg.warm_start, resolve=True)
    return str(prepare_warm_start(task, plain, arch, sft, Path(cache_dir)))


__all__ = ["load_model_and_tokenizer", "resolve_policy"]
