"""Calling a reward function: one finite float per completion, or a clear error naming the verifier."""

from __future__ import annotations

import math
from collections.abc import Callable


def _name(reward_fn) -> str:
    fn = getattr(reward_fn, "func", reward_fn)  # a functools.partial (reward/ configs are _partial_)
    return getattr(fn, "__name__", None) or repr(fn)


def score(reward_fn: Callable[[list[str], list[str]], list[float]], completions: list[str], answers: list[str]):
    """``[float]`` rewards of ``completions``; anything but one finite number per completion fails
    with the verifier, the row and the value named (:func:`score_counted` with ``invalid="stop"``)."""
    return score_counted(reward_fn, completions, answers)[0]


def score_counted(
    reward_fn: Callable[[list[str], list[str]], list[float]],
    completions: list[str],
    answers: list[str],
    *,
    invalid: str = "stop",
) -> tuple[list[float], int]:
    """``(rewards, invalid_count)``: one float per completion.

    A verifier that raises, or returns anything but a list of ``len(completions)`` values, fails with
    its name. Each value must be a finite number (``bool`` counts as 0 or 1); a ``None``, a string, a
    NaN or an infinity stops the step before any update, with the verifier, the row, the value, the
    completion and the answer named (``invalid="stop"``), or is scored 0 and counted
    (``invalid="zero"``, ``guard.invalid_reward=zero``).
    """
    name = _name(reward_fn)
    try:
        rewards = reward_fn(completions, answers)
    except Exception as err:  # a user's verifier: say which one failed and on what
        raise RuntimeError(
            f"reward function {name!r} raised {type(err).__name__}: {err} (first completion: {completions[:1]!r}). "
            "A reward function must return one float per completion and never raise."
        ) from err
    if not isinstance(rewards, list | tuple) and not hasattr(rewards, "tolist"):
        raise TypeError(
            f"reward function {name!r} returned {type(rewards).__name__} {rewards!r:.80}; it must return a list "
            f"of {len(completions)} floats, one per completion."
        )
    rewards = rewards.tolist() if hasattr(rewards, "tolist") else list(rewards)
    if len(rewards) != len(completions):
        raise ValueError(
            f"reward function {name!r} returned {len(rewards)} rewards for {len(completions)} completions."
        )
    out, bad = [], 0
    for row, value in enumerate(rewards):
        number = isinstance(value, int | float) and math.isfinite(value)
        if number:
            out.append(float(value))
            continue
        if invalid != "zero":
            raise ValueError(
                f"reward function {name!r} returned {value!r} for row {row} (completion {completions[row]!r}, "
                f"answer {answers[row]!r}); a reward must be a finite number. Nothing was trained on this batch. "
                "Fix the verifier, or set guard.invalid_reward=zero to score such rows 0 and count them "
                "(train/invalid_rewards)."
            )
        out.append(0.0)
        bad += 1
    return out, bad
