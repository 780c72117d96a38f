"""Length-aware micro-batches: every row once, caps respected, and the cheapest split (checked
against every partition of small batches)."""

import itertools
import random

import pytest

from tbrm.rollout.batching import plan_micro_batches


def cost(plan, lengths, split_cost):
    return sum(len(part) * max(lengths[i] for i in part) + split_cost for part in plan)


def partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest):
        for i in range(len(smaller)):
            yield smaller[:i] + [[first, *smaller[i]]] + smaller[i + 1 :]
        yield [[first], *smaller]


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_is_the_cheapest_partition(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(7)]
    split_cost, max_rows = rng.choice([0, 20, 100]), rng.choice([None, 3])
    plan = plan_micro_batches(lengths, split_cost_tokens=split_cost, max_rows=max_rows)
    assert sorted(i for part in plan for i in part) == list(range(7))
    allowed = [p for p in partitions(list(range(7))) if max_rows is None or max(map(len, p)) <= max_rows]
    assert all(len(part) <= (max_rows or 7) for part in plan)
    assert cost(plan, lengths, split_cost) == min(cost(p, lengths, split_cost) for p in allowed)


def test_caps_on_rows_and_padded_tokens():
    lengths = [50, 48, 47, 10, 9, 9, 8, 100]
    plan = plan_micro_batches(lengths, max_rows=2, split_cost_tokens=1e6)
    assert max(len(part) for part in plan) == 2 and len(plan) == 4
    plan = plan_micro_batches(lengths, max_tokens=100, split_cost_tokens=1e6)
    assert all(len(part) * max(lengths[i] for i in part) <= 100 or len(part) == 1 for part in plan)
    assert [7] in plan  # longer than the cap: alone
    assert sorted(itertools.chain(*plan)) == list(range(8))


def test_split_cost_trades_padding_for_calls():
    lengths = [40, 40, 41, 5, 6, 5]
    assert len(plan_micro_batches(lengths, split_cost_tokens=1e6)) == 1
    two = plan_micro_batches(lengths, split_cost_tokens=50)
    assert sorted(map(sorted, two)) == [[0, 1, 2], [3, 4, 5]]
    free = plan_micro_batches(lengths, split_cost_tokens=0)  # splits are free: no padding at all
    assert cost(free, lengths, 0) == sum(lengths)
    assert plan_micro_batches([], split_cost_tokens=0) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_rows": 0}, "micro_batch_size must be >= 1"), ({"max_tokens": -1}, "micro_batch_tokens"),
     ({"split_cost_tokens": -1}, "split_cost_tokens must be >= 0")],
)  # fmt: skip
def test_bad_settings_name_the_config_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_micro_batches([3, 4], **kwargs)
