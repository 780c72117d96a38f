"""Checks of the composed config that run before any work (no model loaded, no warm start).

Each failure is a ``ValueError`` naming the key, what it holds, the valid range and, for a
mistyped key, the setting it was probably meant to be::

    rollout.temperature must be a number > 0 (got -1); it divides the logits before sampling.
    rollout.temprature is not a setting of rollout/; did you mean rollout.temperature? (...)

``python run.py`` calls :func:`check_config` first; the objectives, data modules and replay buffer
check their own arguments when Hydra instantiates them.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Mapping
from typing import Any

ROLLOUT_KEYS = ("n", "temperature", "top_p", "max_new_tokens", "engine", "is_correction", "is_threshold", "vllm")
IS_CORRECTIONS = (None, "token", "sequence")
OPTIMIZER_KEYS = ("_target_", "_partial_", "lr", "betas", "weight_decay", "eps", "amsgrad")
SCHEDULER_KEYS = ("_target_", "_partial_", "warmup_steps", "min_lr_ratio")
UPDATE_KEYS = ("grad_clip", "micro_batch_size", "micro_batch_tokens", "split_cost_tokens")
GUARD_CHOICES = {"invalid_reward": ("stop", "zero"), "nonfinite": ("stop", "skip")}
MODES = ("train", "sft", "eval", "generate")
#: settings that moved, old spelling -> new (``renamed_overrides`` names the new one)
RENAMED = {
    "task": "mode",
    "task_name": "run_name",
    "optimizer.warmup_steps": "scheduler.warmup_steps",
    "optimizer.min_lr_ratio": "scheduler.min_lr_ratio",
    "optimizer.grad_clip": "update.grad_clip",
    "optimizer.micro_batch_size": "update.micro_batch_size",
    "optimizer.micro_batch_tokens": "update.micro_batch_tokens",
    "optimizer.split_cost_tokens": "update.split_cost_tokens",
    "algorithm.num_iterations": "algorithm.epochs",
    "algorithm.ppo_epochs": "algorithm.epochs",
}


def renamed_overrides(overrides: list[str]) -> list[str]:
    """A message for each command-line override that uses a setting's old spelling (checked before
    Hydra composes, whose own error would not name the new one)."""
    messages = []
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in RENAMED:
            new = RENAMED[key]
            messages.append(f"{key} is now {new}: use {override.replace(key, new, 1)}")
    return messages


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(key: str, rule: str, value: Any, why: str = "") -> None:
    raise ValueError(f"{key} must be {rule} (got {value!r}){'; ' + why if why else ''}.")


def check_keys(section: Mapping, known: tuple[str, ...], prefix: str) -> None:
    """Every key of ``section`` is one of ``known``; a typo names the closest known key."""
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {prefix}.{close[0]}? " if close else ""
            raise ValueError(f"{prefix}.{key} is not a setting of {prefix}/; {hint}(its settings: {', '.join(known)}).")


def check_sampling(section: Mapping, prefix: str) -> None:
    """``temperature > 0``, ``0 < top_p <= 1``, ``n >= 1``, ``max_new_tokens >= 1`` where present."""
    if "temperature" in section:
        t = section["temperature"]
        if not is_number(t) or t <= 0:
            _fail(f"{prefix}.temperature", "a number > 0", t, "it divides the logits before sampling (greedy decoding "
                  "is its own setting: validation reports it as val/accuracy)")  # fmt: skip
    if "top_p" in section:
        p = section["top_p"]
        if not is_number(p) or not 0 < p <= 1:
            _fail(f"{prefix}.top_p", "a number in (0, 1]", p, "1 samples from the whole distribution")
    for key in ("n", "max_new_tokens", "batch_size"):
        if key in section and (not is_int(section[key]) or section[key] < 1):
            _fail(f"{prefix}.{key}", "an integer >= 1", section[key])


def check_rollout(rollout: Mapping) -> None:
    from tbrm.rollout.engine import ENGINES

    check_keys(rollout, ROLLOUT_KEYS, "rollout")
    check_sampling(rollout, "rollout")
    if rollout.get("engine", "auto") not in ENGINES:
        _fail("rollout.engine", f"one of {list(ENGINES)}", rollout.get("engine"))
    if rollout.get("engine") == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "rollout.engine=vllm needs vLLM, which is not installed: pip install -e '.[vllm]' on a CUDA machine, "
            "or the CPU build (docs/vllm.md); or use rollout.engine=auto."
        )
    if rollout.get("is_correction") not in IS_CORRECTIONS:
        _fail("rollout.is_correction", "null, token or sequence", rollout.get("is_correction"))
    threshold = rollout.get("is_threshold", 2.0)
    if not is_number(threshold) or threshold < 1:
        _fail("rollout.is_threshold", "a number >= 1", threshold, "the cap of the truncated importance weight")
    if "vllm" in rollout:
        check_vllm(rollout["vllm"])


def _positive_int_or_none(value) -> bool:
    return value is None or (is_int(value) and value >= 1)


def _bool(value) -> bool:
    return isinstance(value, bool)


#: rollout.vllm (``tbrm.rollout.vllm_engine``): key -> (default, what it must be, the check)
VLLM_OPTIONS = {
    "gpu_memory_utilization": (0.3, "a number in (0, 1]", lambda v: is_number(v) and 0 < v <= 1),
    "kv_cache_memory_bytes": (None, "null or an integer >= 1", _positive_int_or_none),
    "max_model_len": (None, "null or an integer >= 1", _positive_int_or_none),
    "enforce_eager": (None, "null, true or false", lambda v: v is None or _bool(v)),
    "dtype": (
        None,
        "null or one of float32, bfloat16, float16",
        lambda v: v in (None, "float32", "bfloat16", "float16"),
    ),
    "enable_prefix_caching": (True, "true or false", _bool),
    "sleep_mode": (False, "true or false", _bool),
}


def check_vllm(options: Mapping | None) -> dict:
    """``rollout.vllm`` with its defaults, or a ValueError naming the bad key and its rule."""
    options = dict(options or {})
    check_keys(options, tuple(VLLM_OPTIONS), "rollout.vllm")
    options = {key: options.get(key, default) for key, (default, _, _) in VLLM_OPTIONS.items()}
    for key, (_, rule, ok) in VLLM_OPTIONS.items():
        if not ok(options[key]):
            _fail(f"rollout.vllm.{key}", rule, options[key])
    return options


def check_is_correction(rollout: Mapping, algorithm: Mapping) -> None:
    """``rollout.is_correction`` only for an objective with ratios (GRPO, PPO and their kin)."""
    if rollout.get("is_correction") is not None and str(algorithm.get("_target_", "")).endswith("TBRM"):
        raise ValueError(
            f"rollout.is_correction={rollout['is_correction']} corrects the ratio of GRPO and PPO; TBRM has no ratio "
            "to correct (docs/algorithms/tbrm.md#off-policy-data-and-the-rollout-engine): "
            "set rollout.is_correction=null."
        )


def check_update(update: Mapping) -> None:
    check_keys(update, UPDATE_KEYS, "update")
    if not is_number(update.get("grad_clip", 1.0)) or update.get("grad_clip", 1.0) <= 0:
        _fail("update.grad_clip", "a number > 0", update.get("grad_clip"), "the maximum gradient norm")
    for key in ("micro_batch_size", "micro_batch_tokens"):
        if update.get(key) is not None and (not is_int(update[key]) or update[key] < 1):
            _fail(f"update.{key}", "null or an integer >= 1", update[key])
    if not is_number(update.get("split_cost_tokens", 0)) or update.get("split_cost_tokens", 0) < 0:
        _fail("update.split_cost_tokens", "a number >= 0", update.get("split_cost_tokens"))


def check_scheduler(sched: Mapping) -> None:
    if sched.get("_target_") == "tbrm.optim.warmup_cosine_schedule":  # another schedule takes its own keys
        check_keys(sched, SCHEDULER_KEYS, "scheduler")
    if not is_int(sched.get("warmup_steps", 0)) or sched.get("warmup_steps", 0) < 0:
        _fail("scheduler.warmup_steps", "an integer >= 0", sched.get("warmup_steps"), "steps of linear warm-up")
    ratio = sched.get("min_lr_ratio", 0.0)
    if not is_number(ratio) or not 0 <= ratio <= 1:
        _fail("scheduler.min_lr_ratio", "a number in [0, 1]", ratio, "the final lr as a fraction of lr")


def check_optimizer(opt: Mapping) -> None:
    if opt.get("_target_") == "tbrm.optim.adamw":  # another optimizer's partial takes its own keys
        check_keys(opt, OPTIMIZER_KEYS, "optimizer")
    if not is_number(opt.get("lr")) or opt["lr"] <= 0:
        _fail("optimizer.lr", "a number > 0", opt.get("lr"))
    betas = opt.get("betas", (0.9, 0.999))
    if not (isinstance(betas, list | tuple) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)):
        _fail("optimizer.betas", "two numbers in [0, 1)", betas)
    if not is_number(opt.get("weight_decay", 0.0)) or opt.get("weight_decay", 0.0) < 0:
        _fail("optimizer.weight_decay", "a number >= 0", opt.get("weight_decay"))


def check_trainer(trainer: Mapping) -> None:
    steps = trainer.get("max_steps")
    if not is_int(steps) or steps < 1:
        _fail("trainer.max_steps", "an integer >= 1", steps, "RL steps; the lr schedule spans them")
    every = trainer.get("val_check_interval")
    if every is not None and not (is_int(every) and every >= 1) and not (is_number(every) and 0 < every <= 1):
        _fail("trainer.val_check_interval", "an integer >= 1 (steps) or a fraction in (0, 1]", every)


def data_parallel_world(trainer: Mapping) -> int | None:
    """The data-parallel ranks a trainer config asks for (``devices x num_nodes``; ``auto`` on a GPU
    accelerator: the visible GPUs; None where it cannot be told)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    devices = len(devices) if isinstance(devices, list | tuple) else devices
    if devices in ("auto", -1, "-1") and trainer.get("accelerator") in ("gpu", "cuda"):
        import torch

        devices = torch.cuda.device_count()
    return devices * nodes if is_int(devices) and devices > 0 and is_int(nodes) and nodes > 0 else None


def check_data_parallel(trainer: Mapping, data: Mapping) -> None:
    """Each rank takes an equal part of every step's prompts (or stored groups)."""
    world = data_parallel_world(trainer)
    if world and world > 1 and trainer.get("use_distributed_sampler", True) is not False:
        _fail("trainer.use_distributed_sampler", f"false with {world} data-parallel ranks", True,
              "the DataModules shard each step's batch themselves: use trainer=ddp or trainer=fsdp (or their "
              "_cpu twins), which set it")  # fmt: skip
    units = data.get("batch_size", 1) // max(data.get("group_size", 1), 1)
    if world and world > 1 and is_int(data.get("batch_size")) and units % world:
        what = "data.batch_size / data.group_size (groups per step)" if "group_size" in data else "data.batch_size"
        _fail(what, f"a multiple of the {world} data-parallel ranks (trainer.devices x trainer.num_nodes)", units,
              "each rank samples an equal part of every step")  # fmt: skip


def check_launch(trainer: Mapping, multirun: bool, launcher: str) -> None:
    """A sweep's jobs run data-parallel only as Slurm jobs: Lightning starts a job's other ranks by
    running the script again, which cannot re-run one job of a sweep in the sweep's process."""
    world, launcher = data_parallel_world(trainer), launcher.rsplit(".", 1)[-1]
    if multirun and world and world > 1 and "Slurm" not in launcher:
        raise ValueError(
            f"trainer.devices x trainer.num_nodes = {world} in a multirun with {launcher}: "
            "a sweep's jobs run data-parallel as Slurm jobs (hydra/launcher=slurm, one task per device); "
            "here run each job with its own `python run.py ...`, or sweep single-device jobs (trainer.devices=1)."
        )


def check_guard(guard: Mapping) -> None:
    check_keys(guard, tuple(GUARD_CHOICES), "guard")
    for key, choices in GUARD_CHOICES.items():
        if key in guard and guard[key] not in choices:
            _fail(f"guard.{key}", f"one of {list(choices)}", guard[key])


def check_config(cfg: Mapping) -> None:
    """Check a resolved run config (``OmegaConf.to_container(cfg, resolve=True)``) before any work."""
    mode = cfg.get("mode", "train")
    if mode not in MODES:
        _fail("mode", f"one of {list(MODES)}", mode)
    if mode == "train":
        check_rollout(cfg.get("rollout") or {})
        check_is_correction(cfg.get("rollout") or {}, cfg.get("algorithm") or {})
        check_optimizer(cfg.get("optimizer") or {})
        check_scheduler(cfg.get("scheduler") or {})
        check_update(cfg.get("update") or {})
        check_trainer(cfg.get("trainer") or {})
        check_data_parallel(cfg.get("trainer") or {}, cfg.get("data") or {})
        check_guard(cfg.get("guard") or {})
    elif mode in ("eval", "generate"):
        check_rollout(cfg.get("rollout") or {})
    if mode == "eval":
        check_sampling({k: v for k, v in (cfg.get("eval") or {}).items() if k in ("temperature", "top_p",
                        "max_new_tokens", "batch_size")}, "eval")  # fmt: skip
    if mode == "generate":
        check_sampling(cfg.get("generate") or {}, "generate")
