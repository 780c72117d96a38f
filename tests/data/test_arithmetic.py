import pytest

from tbrm.data.arithmetic import ArithmeticTask, add_solution, mul_solution
from tbrm.rewards import exact_number_reward


def test_multiplication_scratchpad():
    assert mul_solution(47, 86) == "47*6=282|47*8=376|282+3760=4042|#### 4042"
    assert mul_solution(123, 7) == "123*7=861|#### 861"


def test_addition_scratchpad_carries():
    assert add_solution(57, 68) == "7+8=15|5+6+1=12|#### 125"
    assert add_solution(905, 95) == "5+5=10|0+9+1=10|9+1=10|#### 1000"


@pytest.mark.parametrize("op,a_digits,b_digits", [("mul", 2, 2), ("add", 3, 2), ("mul", 3, 1)])
def test_splits_are_disjoint_seeded_and_correct(op, a_digits, b_digits):
    task = ArithmeticTask(op=op, a_digits=a_digits, b_digits=b_digits, num_val=200, num_test=100)
    splits = task.splits()
    assert len(splits["validation"]) == 200 and len(splits["test"]) == 100
    prompts = {name: {r["prompt"] for r in rows} for name, rows in splits.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]

    def count(d):
        return 10 if d == 1 else 9 * 10 ** (d - 1)  # 1 digit includes 0

    total = count(a_digits) * count(b_digits)
    assert sum(map(len, prompts.values())) == total
    for row in splits["train"][:300] + splits["validation"]:
        expected = row["a"] * row["b"] if op == "mul" else row["a"] + row["b"]
        assert row["answer"] == str(expected)
        assert row["completion"].endswith(f"#### {expected}")
        assert set(row["prompt"] + row["completion"]) <= set(task.alphabet())
    # the reference solutions are exactly what the reward accepts
    rows = splits["validation"]
    assert exact_number_reward([r["completion"] for r in rows], [r["answer"] for r in rows]) == [1.0] * len(rows)
    same = ArithmeticTask(op=op, a_digits=a_digits, b_digits=b_digits, num_val=200, num_test=100).splits()
    assert same["validation"] == splits["validation"]
    other = ArithmeticTask(op=op, a_digits=a_digits, b_digits=b_digits, num_val=200, num_test=100, seed=7).splits()
    assert other["validation"] != splits["validation"]


def test_num_train_caps_training_split():
    assert len(ArithmeticTask(num_train=10).splits()["train"]) == 10


@pytest.mark.parametrize(
    "kwargs,match",
    [({"op": "div"}, "op"), ({"a_digits": 0}, "digits"), ({"num_val": 5000, "num_test": 4000}, "no training")],
)
def test_bad_settings_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticTask(**kwargs)
