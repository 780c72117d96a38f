"""Evaluation: accuracy of greedy and sampled completions, the unbiased pass@k estimator, and
per-benchmark tables."""

from tbrm.eval.accuracy import evaluate_accuracy, pass_at_k
from tbrm.eval.benchmarks import (
    BenchmarkEvaluation,
    evaluate_benchmarks,
    flatten,
    format_table,
    load_benchmarks,
    with_local_files,
)

__all__ = [
    "BenchmarkEvaluation",
    "evaluate_accuracy",
    "evaluate_benchmarks",
    "flatten",
    "format_table",
    "load_benchmarks",
    "pass_at_k",
    "with_local_files",
]
