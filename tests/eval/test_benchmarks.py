import json

import pytest

from tbrm.data.hub import MathSource
from tbrm.eval import evaluate_benchmarks, format_table
from tbrm.models.loading import load_model_and_tokenizer


def _source(tmp_path, name, n):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}*{i}=", "answer": str(i * i)}) + "\n" for i in range(n)))
    return MathSource(path=str(path))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def test_every_metric_follows_the_reward(tmp_path, tiny):
    benchmarks = {"a": _source(tmp_path, "a", 3), "b": _source(tmp_path, "b", 5)}
    seen = []

    def reward_first_half(completions, answers):  # correct exactly for problems with answer < 4
        seen.extend(answers)
        return [1.0 if int(a) < 4 else 0.0 for a in answers]

    results = evaluate_benchmarks(
        *tiny, benchmarks, reward_first_half, template="{question}", n_samples=4, k=(1, 2, 4), max_new_tokens=4
    )
    # problems 0, 1 (answers 0, 1) are "solved" in each set; sampled rewards repeat each answer 4 times
    assert results["a"] == {
        "avg@1": 2 / 3,
        "avg@4": 2 / 3,
        "pass@1": 2 / 3,
        "pass@2": 2 / 3,
        "pass@4": 2 / 3,
        "problems": 3.0,
    }
    assert results["b"]["avg@1"] == 2 / 5 and results["b"]["pass@4"] == 2 / 5 and results["b"]["problems"] == 5.0
    assert results["mean"]["avg@1"] == pytest.approx((2 / 3 + 2 / 5) / 2) and results["mean"]["problems"] == 8
    assert seen.count("0") == 2 * (1 + 4)  # greedy once and 4 samples, in both sets
    table = format_table(results)
    assert table.splitlines()[0] == "| benchmark | problems | avg@1 | avg@4 | pass@1 | pass@2 | pass@4 |"
    assert "| a | 3 | 66.7 | 66.7 | 66.7 | 66.7 | 66.7 |" in table and table.splitlines()[-1].startswith(
        "| mean | 8 | 53.3"
    )


def test_k_above_n_samples_is_refused(tmp_path, tiny):
    with pytest.raises(ValueError, match="more than eval.n_samples=2"):
        evaluate_benchmarks(*tiny, {"a": _source(tmp_path, "a", 1)}, lambda c, a: [0.0] * len(c), n_samples=2, k=(4,))
