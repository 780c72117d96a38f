"""Micro-batches that waste little compute on padding.

A forward (and backward) pass costs about the number of positions it runs, padding included,
plus a fixed cost per call. ``plan_micro_batches`` splits the rows of a batch into micro-batches
of similar length (``RolloutBatch.select`` trims each to its longest row), choosing the split
that minimises ``sum(rows x longest row) + split_cost_tokens x micro-batches`` under the caps,
exactly, by dynamic programming over the rows sorted by length (the best micro-batches of a
length-sorted list are contiguous runs of it). Gradients accumulate over the micro-batches with
``tbrm.objectives.common.aggregation_weight``, so the update does not depend on the split.
"""

from __future__ import annotations

import numpy as np


def plan_micro_batches(
    lengths: list[int],
    *,
    max_rows: int | None = None,
    max_tokens: int | None = None,
    split_cost_tokens: float = 256.0,
) -> list[list[int]]:
    """Partition row indices ``0 .. len(lengths) - 1`` into micro-batches.

    Args:
        lengths: each row's real length in tokens (prompt + completion, padding excluded).
        max_rows: at most this many rows per micro-batch (None: no cap).
        max_tokens: at most this many padded positions (rows x longest row) per micro-batch; a
            row longer than it still goes alone (None: no cap).
        split_cost_tokens: what one more micro-batch costs, in padded positions: large values
            give few, padded micro-batches, 0 gives one per distinct length.

    Returns micro-batches of row indices, longest rows first; every row appears exactly once.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"micro_batch_size must be >= 1 or null, got {max_rows}.")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1 or null, got {max_tokens}.")
    if split_cost_tokens < 0:
        raise ValueError(f"split_cost_tokens must be >= 0, got {split_cost_tokens}.")
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: -lengths[i])
    longest = np.array([max(lengths[i], 1) for i in order], dtype=np.float64)
    starts = np.arange(n)
    best = np.zeros(n + 1)  # best[j]: cost of the first j sorted rows
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last micro-batch of best[j] starts
    for end in range(1, n + 1):
        rows = end - starts[:end]  # size of micro-batch [start, end) for each start
        padded = rows * longest[:end]  # its longest row is its first (sorted descending)
        cost = best[:end] + padded + split_cost_tokens
        allowed = np.ones(end, dtype=bool)
        if max_rows is not None:
            allowed &= rows <= max_rows
        if max_tokens is not None:
            allowed &= (padded <= max_tokens) | (rows == 1)
        cost[~allowed] = np.inf
        cut[end] = int(np.argmin(cost))
        best[end] = cost[cut[end]]
    plan, end = [], n
    while end > 0:
        plan.append(order[cut[end] : end])
        end = int(cut[end])
    return plan[::-1]
