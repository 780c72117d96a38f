import json

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tbrm.rewards import extract_answer, is_equivalent, last_boxed, math_verify_reward


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("The answer is \\boxed 7.", "7"),
        ("\\fbox{x^2}", "x^2"),
        ("\\boxed{unclosed", None),
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extract_answer_falls_back_to_hash_answer():
    assert extract_answer("steps #### 72") == "72"
    assert extract_answer("#### 72 and \\boxed{73}") == "73"
    assert extract_answer("nothing") is None


@pytest.mark.parametrize(
    "predicted,gold,expected",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac12", "\\frac{1}{2}", True),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("27", "27.0", True),
        ("x=5", "5", True),
        ("\\sqrt{2}", "2^{1/2}", True),
        ("3", "4", False),
        ("\\frac{1}{3}", "0.33", False),
    ],
)
def test_is_equivalent(predicted, gold, expected):
    assert is_equivalent(predicted, gold) is expected


def test_math_verify_reward_never_raises_on_odd_output():
    odd = ["", "\\boxed{", "\\boxed{x^2+}", "\\boxed{}", "\x00\\boxed{\ufffd}", "\\boxed{" + "(" * 300 + "}"]
    assert math_verify_reward(odd, ["1"] * len(odd)) == [0.0] * len(odd)
    assert math_verify_reward(["\\boxed{7}"], ["\\frac{"]) == [0.0]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        math_verify_reward(["a", "b"], ["1"])


def test_reward_config_instantiates(repo_root):
    reward = instantiate(OmegaConf.load(repo_root / "conf/reward/math_verify.yaml"))
    assert reward(["\\boxed{\\frac{3}{4}}", "#### 2"], ["0.75", "3"]) == [1.0, 0.0]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_math500_reference_solutions_score_correct(math_data_dir):
    """The last \\boxed{} of each MATH-500 solution matches its `answer` (>= 99%), shuffled pairs do not (<= 1%)."""
    rows = _rows(math_data_dir / "math500.jsonl")
    solutions, answers = [r["solution"] for r in rows], [r["answer"] for r in rows]
    matched = math_verify_reward(solutions, answers)
    shifted = math_verify_reward(solutions, answers[1:] + answers[:1])
    assert sum(matched) / len(rows) >= 0.99
    assert sum(shifted) / len(rows) <= 0.01


def test_gsm8k_reference_answers_score_correct(math_data_dir):
    rows = _rows(math_data_dir / "gsm8k_test.jsonl")
    golds = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    assert math_verify_reward([r["answer"] for r in rows], golds) == [1.0] * len(rows)
