"""Evaluation: accuracy of greedy and sampled completions, the unbiased pass@k estimator."""

from tbrm.eval.accuracy import evaluate_accuracy, pass_at_k

__all__ = ["evaluate_accuracy", "pass_at_k"]
