"""Calling a reward function: one float per completion, or a clear error naming the verifier."""

from __future__ import annotations

from collections.abc import Callable


def score(reward_fn: Callable[[list[str], list[str]], list[float]], completions: list[str], answers: list[str]):
    """``[float]`` rewards of ``completions``; a verifier that raises, or returns the wrong number of
    rewards, fails with its name, the error and the first completion in the message."""
    try:
        rewards = reward_fn(completions, answers)
    except Exception as err:  # a user's verifier: say which one failed and on what
        raise RuntimeError(
            f"reward function {getattr(reward_fn, '__name__', reward_fn)!r} raised "
            f"{type(err).__name__}: {err} (first completion: {completions[:1]!r}). "
            "A reward function must return one float per completion and never raise."
        ) from err
    if len(rewards) != len(completions):
        raise ValueError(f"reward function returned {len(rewards)} rewards for {len(completions)} completions.")
    return [float(r) for r in rewards]
