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
import math
from collections.abc import Mapping
from typing import Any

ROLLOUT_KEYS = ("n", "temperature", "top_p", "max_new_tokens", "engine")
OPTIMIZER_KEYS = (
    "lr", "betas", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip",
    "micro_batch_size", "micro_batch_tokens", "split_cost_tokens",
)  # fmt: skip
GUARD_CHOICES = {"invalid_reward": ("stop", "zero"), "nonfinite": ("stop", "skip")}


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
    from tbrm.rollout.hf import ENGINES

    check_keys(rollout, ROLLOUT_KEYS, "rollout")
    check_sampling(rollout, "rollout")
    if rollout.get("engine", "auto") not in ENGINES:
        _fail("rollout.engine", f"one of {list(ENGINES)}", rollout.get("engine"))


def check_optimizer(opt: Mapping, max_steps: int | None = None) -> None:
    check_keys(opt, OPTIMIZER_KEYS, "optimizer")
    if not is_number(opt.get("lr")) or opt["lr"] <= 0:
        _fail("optimizer.lr", "a number > 0", opt.get("lr"))
    betas = opt.get("betas", (0.9, 0.999))
    if not (isinstance(betas, list | tuple) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)):
        _fail("optimizer.betas", "two numbers in [0, 1)", betas)
    if not is_number(opt.get("weight_decay", 0.0)) or opt.get("weight_decay", 0.0) < 0:
        _fail("optimizer.weight_decay", "a number >= 0", opt.get("weight_decay"))
    if not is_int(opt.get("warmup_steps", 0)) or opt.get("warmup_steps", 0) < 0:
        _fail("optimizer.warmup_steps", "an integer >= 0", opt.get("warmup_steps"), "steps of linear warm-up")
    ratio = opt.get("min_lr_ratio", 0.0)
    if not is_number(ratio) or not 0 <= ratio <= 1:
        _fail("optimizer.min_lr_ratio", "a number in [0, 1]", ratio, "the final lr as a fraction of lr")
    if not is_number(opt.get("grad_clip", 1.0)) or opt.get("grad_clip", 1.0) <= 0:
        _fail("optimizer.grad_clip", "a number > 0", opt.get("grad_clip"), "the maximum gradient norm")
    for key in ("micro_batch_size", "micro_batch_tokens"):
        if opt.get(key) is not None and (not is_int(opt[key]) or opt[key] < 1):
            _fail(f"optimizer.{key}", "null or an integer >= 1", opt[key])
    if not is_number(opt.get("split_cost_tokens", 0)) or opt.get("split_cost_tokens", 0) < 0:
        _fail("optimizer.split_cost_tokens", "a number >= 0", opt.get("split_cost_tokens"))


def check_trainer(trainer: Mapping) -> None:
    steps = trainer.get("max_steps")
    if not is_int(steps) or steps < 1:
        _fail("trainer.max_steps", "an integer >= 1", steps, "RL steps; the lr schedule spans them")
    every = trainer.get("val_check_interval")
    if every is not None and not (is_int(every) and every >= 1) and not (is_number(every) and 0 < every <= 1):
        _fail("trainer.val_check_interval", "an integer >= 1 (steps) or a fraction in (0, 1]", every)


def check_guard(guard: Mapping) -> None:
    check_keys(guard, tuple(GUARD_CHOICES), "guard")
    for key, choices in GUARD_CHOICES.items():
        if key in guard and guard[key] not in choices:
            _fail(f"guard.{key}", f"one of {list(choices)}", guard[key])


def check_config(cfg: Mapping) -> None:
    """Check a resolved run config (``OmegaConf.to_container(cfg, resolve=True)``) before any work."""
    if cfg.get("task", "train") == "train":
        check_rollout(cfg.get("rollout") or {})
        check_optimizer(cfg.get("optimizer") or {})
        check_trainer(cfg.get("trainer") or {})
        check_guard(cfg.get("guard") or {})
    elif cfg.get("task") in ("eval", "generate"):
        check_rollout(cfg.get("rollout") or {})
    if cfg.get("task") == "eval":
        check_sampling({k: v for k, v in (cfg.get("eval") or {}).items() if k in ("temperature", "top_p",
                        "max_new_tokens", "batch_size")}, "eval")  # fmt: skip
    if cfg.get("task") == "generate":
        check_sampling(cfg.get("generate") or {}, "generate")
