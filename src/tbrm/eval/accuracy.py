"""Accuracy of a model on prompt records: greedy, sampled (mean@k) and pass@k."""

from __future__ import annotations

from collections.abc import Callable
from math import comb

import torch

from tbrm.rewards.scoring import score
from tbrm.rollout.engine import RolloutEngine, as_engine, generate_rollouts


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021, Eq. 1):
    1 - C(n - c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k}).")
    return 1.0 - comb(n - c, k) / comb(n, k)


@torch.no_grad()
def evaluate_accuracy(
    model,
    tokenizer,
    records: list[dict],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    *,
    n_samples: int = 0,
    k: tuple[int, ...] = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 250,
    engine: str | RolloutEngine = "compact",
) -> dict[str, float]:
    """Greedy accuracy and, with ``n_samples`` > 0, mean accuracy of sampled completions and
    pass@k for each ``k`` <= ``n_samples``. Returns ``{"accuracy", "accuracy_sampled", "pass@k"}``.

    ``batch_size`` bounds the completions of one generate call (``batch_size // n_samples``
    prompts per sampled call), so memory does not grow with ``n_samples``. ``engine``: a
    ``rollout.engine`` name or an engine already built."""
    engine = as_engine(engine, model, tokenizer)  # one engine for every call
    greedy, sampled, per_prompt = [], [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prompts, answers = [r["prompt"] for r in chunk], [r["answer"] for r in chunk]
        out = generate_rollouts(
            model, tokenizer, prompts, answers, greedy=True, max_new_tokens=max_new_tokens, engine=engine
        )
        greedy += score(reward_fn, out.completions, out.answers)
    # batch_size counts completions: n_samples of each prompt go in the same call
    per_call = max(1, batch_size // max(n_samples, 1))
    for start in range(0, len(records) if n_samples else 0, per_call):
        chunk = records[start : start + per_call]
        prompts, answers = [r["prompt"] for r in chunk], [r["answer"] for r in chunk]
        out = generate_rollouts(
            model,
            tokenizer,
            prompts,
            answers,
            n=n_samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            engine=engine,
        )
        rewards = score(reward_fn, out.completions, out.answers)
        sampled += rewards
        per_prompt += [sum(r > 0 for r in rewards[i : i + n_samples]) for i in range(0, len(rewards), n_samples)]
    metrics = {"accuracy": sum(greedy) / max(len(greedy), 1)}
    if n_samples:
        metrics["accuracy_sampled"] = sum(sampled) / len(sampled)
        for kk in k:
            metrics[f"pass@{kk}"] = sum(pass_at_k(n_samples, c, kk) for c in per_prompt) / len(per_prompt)
    return metrics
