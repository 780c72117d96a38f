"""Exact numeric check of the ``#### <answer>`` at the end of a completion."""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_hash_answer(text: str) -> str | None:
    """The first number after the last ``####`` in ``text``, or None when there is none."""
    if "####" not in text:
        return None
    match = _NUMBER.search(text.rsplit("####", 1)[1])
    return match.group(0).replace(",", "") if match else None


def _as_number(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def exact_number_reward(completions: list[str], answers: list[str]) -> list[float]:
    """1.0 where the completion's ``####`` answer equals the gold answer as a number, else 0.0.

    Numbers are compared exactly (``4042`` == ``4,042`` == ``4042.0``); a completion with no
    ``####`` or no number after it scores 0. Never raises on odd model output.
    """
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers.")
    rewards = []
    for completion, answer in zip(completions, answers, strict=True):
        predicted = extract_hash_answer(completion)
        gold = _as_number(str(answer))
        value = _as_number(predicted) if predicted is not None else None
        rewards.append(1.0 if value is not None and gold is not None and value == gold else 0.0)
    return rewards
