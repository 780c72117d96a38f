"""Evaluation: accuracy of greedy and sampled completions, the unbiased pass@k estimator, and
per-benchmark tables."""

from tbrm.eval.accuracy import evaluate_accuracy, pass_at_k
from tbrm.eval.benchmarks import evaluate_benchmarks, format_table

__all__ = ["evaluate_accuracy", "evaluate_benchmarks", "format_table", "pass_at_k"]
