import pytest

from tbrm.rewards import exact_number_reward, extract_hash_answer


@pytest.mark.parametrize(
    "text,expected",
    [
        ("47*6=282|#### 4042", "4042"),
        ("#### 1,234", "1234"),
        ("#### -3.5 apples", "-3.5"),
        ("a #### 1 then #### 2", "2"),
        ("no answer here", None),
        ("####", None),
        ("#### abc", None),
    ],
)
def test_extract_hash_answer(text, expected):
    assert extract_hash_answer(text) == expected


def test_exact_number_reward_compares_numbers():
    completions = ["x|#### 4042", "#### 4042.0", "#### 4,042", "#### 4043", "4042", "", "#### 40421"]
    assert exact_number_reward(completions, ["4042"] * 7) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_exact_number_reward_never_raises_on_odd_output():
    odd = ["#### 1/0", "#### ..", "#### " + "9" * 500, "\x00####\ufffd", "#### -"]
    assert exact_number_reward(odd, ["7", "2", "3", "4", "5"]) == [0.0] * 5
    assert exact_number_reward(["#### 7"], ["not a number"]) == [0.0]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        exact_number_reward(["a", "b"], ["1"])
