"""Verifiers: ``(completions: list[str], answers: list[str]) -> list[float]``."""

from tbrm.rewards.exact import exact_number_reward, extract_hash_answer
from tbrm.rewards.math_answers import extract_answer, is_equivalent, last_boxed, math_verify_reward

__all__ = [
    "exact_number_reward",
    "extract_answer",
    "extract_hash_answer",
    "is_equivalent",
    "last_boxed",
    "math_verify_reward",
]
