import pytest

from tbrm.data.replay import ReplayBuffer


def _groups(step, count, n=2):
    return [[{"step": step, "g": i, "k": k} for k in range(n)] for i in range(count)]


def test_capacity_evicts_the_oldest_groups():
    buffer = ReplayBuffer(capacity=6, max_age=None, fraction=0.5)
    buffer.add(_groups(0, 2), step=0)
    buffer.add(_groups(1, 2), step=1)
    assert len(buffer) == 6
    buffer.add(_groups(2, 1), step=2)  # 8 > 6: the two groups of step 0 go
    assert len(buffer) == 6 and [s for s, _ in buffer.groups] == [1, 1, 2]


def test_only_young_enough_groups_are_drawn_whole_and_without_repeats():
    buffer = ReplayBuffer(capacity=100, max_age=2, fraction=0.5, seed=1)
    for step in range(5):
        buffer.add(_groups(step, 3), step=step)
    drawn = buffer.sample(100, step=5)
    assert {s for s, _ in drawn} == {3, 4}  # steps 3 and 4 are at most 2 steps old at step 5
    assert len(drawn) == 6 and all(len(g) == 2 and g[0]["g"] == g[1]["g"] for _, g in drawn)
    assert len({(s, g[0]["g"]) for s, g in drawn}) == 6
    assert len(buffer.sample(2, step=5)) == 2
    assert buffer.sample(4, step=50) == []  # everything too old


def test_state_round_trip_and_bad_settings():
    buffer = ReplayBuffer(capacity=10, max_age=3, fraction=0.25, seed=0)
    buffer.add(_groups(0, 2), step=0)
    copy = ReplayBuffer(capacity=10, max_age=3, fraction=0.25, seed=99)
    copy.load_state_dict(buffer.state_dict())
    assert len(copy) == 4 and copy.sample(2, 1) == buffer.sample(2, 1)
    for kwargs, key in (({"capacity": 0}, "capacity"), ({"max_age": 0}, "max_age"), ({"fraction": 1.0}, "fraction")):
        with pytest.raises(ValueError, match=f"replay.{key}"):
            ReplayBuffer(**kwargs)
