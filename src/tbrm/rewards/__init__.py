"""Verifiers: ``(completions: list[str], answers: list[str]) -> list[float]``."""

from tbrm.rewards.exact import exact_number_reward, extract_hash_answer

__all__ = ["exact_number_reward", "extract_hash_answer"]
