"""A replay buffer of past rollouts: capacity, maximum age, and the share of each batch it supplies.

Each training step generates fresh completions for ``1 - fraction`` of its prompts and draws the
rest from the buffer (sampled before the fresh ones are added, so replayed data is always from an
older policy), then adds the fresh ones. Units are a prompt's group of ``rollout.n`` completions,
so GRPO's groups stay whole. TBRM trains on replayed trajectories as is (its residual needs no
importance weights); GRPO and PPO use the stored behaviour log-probs in their ratios.
"""

from __future__ import annotations

import random
from collections import deque


class ReplayBuffer:
    """Past rollouts as trajectory records, grouped by prompt.

    Args:
        capacity: trajectories kept; the oldest groups go first when it is exceeded.
        max_age: only groups generated at most this many steps ago are drawn (None: any age).
        fraction: the share of each step's prompts answered from the buffer (0 <= fraction < 1).
        seed: the sampling seed.
    """

    def __init__(self, capacity: int = 1024, max_age: int | None = 4, fraction: float = 0.5, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"replay.capacity must be an integer >= 1 (got {capacity!r}).")
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1):
            raise ValueError(f"replay.max_age must be null or an integer >= 1 step (got {max_age!r}).")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ValueError(f"replay.fraction must be a number in [0, 1) (got {fraction!r}).")
        self.capacity, self.max_age, self.fraction = capacity, max_age, float(fraction)
        self.rng = random.Random(seed)
        self.groups: deque[tuple[int, list[dict]]] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, groups: list[list[dict]], step: int) -> None:
        """Store ``groups`` (lists of records of one prompt) generated at ``step``; evict the oldest."""
        for group in groups:
            self.groups.append((step, group))
            self.size += len(group)
        while self.size > self.capacity and self.groups:
            self.size -= len(self.groups.popleft()[1])

    def eligible(self, step: int) -> list[tuple[int, list[dict]]]:
        return [(s, g) for s, g in self.groups if self.max_age is None or step - s <= self.max_age]

    def sample(self, k: int, step: int) -> list[tuple[int, list[dict]]]:
        """Up to ``k`` groups, uniformly among those young enough at ``step``, with their steps."""
        pool = self.eligible(step)
        return self.rng.sample(pool, min(k, len(pool)))

    def state_dict(self) -> dict:
        return {"groups": list(self.groups), "size": self.size, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.groups = deque((int(s), g) for s, g in state["groups"])
        self.size = int(state["size"])
        self.rng.setstate(state["rng"])
