import pytest

from tbrm.rewards.scoring import score


def test_rewards_are_floats_and_broken_verifiers_are_named():
    assert score(lambda c, a: [1, True, 0.5], ["x", "y", "z"], ["1", "2", "3"]) == [1.0, 1.0, 0.5]

    def picky(completions, answers):
        raise KeyError("boom")

    with pytest.raises(RuntimeError, match=r"'picky' raised KeyError: 'boom' \(first completion: \['x'\]\)"):
        score(picky, ["x"], ["1"])
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        score(lambda c, a: [0.0], ["x", "y"], ["1", "2"])
