"""Per-benchmark evaluation: greedy avg@1, sampled avg@k and unbiased pass@k, and their table.

Each benchmark is a :class:`tbrm.data.hub.MathSource` (hub name or local file); its rows are
rendered with the run's prompt template and scored by the run's reward (Math-Verify for the math
sets). The protocol follows the TBRM paper's evaluation: greedy decoding for avg@1, ``n_samples``
completions at the sampling temperature for avg@k, and pass@k by the unbiased estimator
(Chen et al., 2021, Eq. 1).
"""

from __future__ import annotations

from collections.abc import Callable

from tbrm.data.hub import MathSource
from tbrm.eval.accuracy import evaluate_accuracy


def evaluate_benchmarks(
    model,
    tokenizer,
    benchmarks: dict[str, MathSource],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    *,
    template: str = "plain",
    n_samples: int = 4,
    k: tuple[int, ...] = (1, 4),
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """``{benchmark: {"avg@1", "avg@<n>", "pass@<k>"..., "problems"}}`` plus a ``mean`` row."""
    if any(kk > n_samples for kk in k):
        raise ValueError(f"eval.k {list(k)} asks for more than eval.n_samples={n_samples} samples per problem.")
    results = {}
    for name, source in benchmarks.items():
        if progress:
            progress(name)
        records, _ = source.records(template, tokenizer=tokenizer)
        metrics = evaluate_accuracy(
            model,
            tokenizer,
            records,
            reward_fn,
            n_samples=n_samples,
            k=tuple(k),
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        row = {"avg@1": metrics["accuracy"]}
        if n_samples:
            row[f"avg@{n_samples}"] = metrics["accuracy_sampled"]
            row.update({key: value for key, value in metrics.items() if key.startswith("pass@")})
        results[name] = {**row, "problems": float(len(records))}
    if results:
        keys = [key for key in next(iter(results.values())) if key != "problems"]
        results["mean"] = {key: sum(r[key] for r in results.values()) / len(results) for key in keys}
        results["mean"]["problems"] = sum(r["problems"] for name, r in results.items() if name != "mean")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per benchmark and the unweighted mean, accuracies in percent."""
    if not results:
        return "(no benchmarks)"
    keys = [key for key in next(iter(results.values())) if key != "problems"]
    lines = ["| benchmark | problems | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 2) + "|"]
    for name, row in results.items():
        cells = " | ".join(f"{100 * row[key]:.1f}" for key in keys)
        lines.append(f"| {name} | {int(row['problems'])} | {cells} |")
    return "\n".join(lines)
