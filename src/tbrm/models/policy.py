"""What ``run.py`` loads as the initial policy: the model options of ``conf/model/`` and the source
(``model.name_or_path``, or the embedded default's cached warm start)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tbrm.models.loading import LOAD_OPTIONS


def load_options(model_cfg: DictConfig, *, inference: bool = False) -> dict:
    """The keys of ``model/`` that say how to load the model (dtype, attention, checkpointing).

    ``inference``: for a model that never trains (``mode=eval``): ``inference_dtype``, no
    gradient checkpointing. Otherwise ``inference_dtype`` is kept for the frozen reference.
    """
    options = {key: model_cfg[key] for key in LOAD_OPTIONS if key in model_cfg}
    if inference:
        options["dtype"] = model_cfg.get("inference_dtype") or options.get("dtype", "float32")
        options["gradient_checkpointing"] = False
    elif model_cfg.get("inference_dtype"):
        options["inference_dtype"] = model_cfg.inference_dtype
    return options


def resolve_policy(model_cfg: DictConfig, task, task_cfg: DictConfig, cache_dir: str) -> str:
    """The initial policy's source: ``model.name_or_path`` when given, else the cached warm start
    of the tiny default (built now, with a progress bar, when the cache has none)."""
    if model_cfg.get("name_or_path"):
        return str(model_cfg.name_or_path)
    if not hasattr(task, "alphabet"):  # the tiny model's character tokenizer is built from the task's alphabet
        raise ValueError(
            f"data={type(task).__name__} needs a real model, but model.name_or_path is null, which builds the "
            "embedded tiny model with a character tokenizer for data=arithmetic only. Set model.name_or_path="
            "<hub name or directory> (or model=qwen2_5_math_1_5b), or use data=arithmetic."
        )
    from tbrm.models.warm_start import prepare_warm_start

    plain = OmegaConf.to_container(task_cfg, resolve=True)
    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True)
    sft = OmegaConf.to_container(model_cfg.warm_start, resolve=True)
    return str(prepare_warm_start(task, plain, arch, sft, Path(cache_dir)))
