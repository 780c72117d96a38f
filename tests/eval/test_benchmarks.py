import json

import pytest

from tbrm.data.hub import MathSource
from tbrm.eval import evaluate_benchmarks, flatten, format_table, with_local_files
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
        "score": 2 / 3,
        "problems": 3.0,
        "skipped": 0.0,
    }
    assert results["b"]["avg@1"] == 2 / 5 and results["b"]["pass@4"] == 2 / 5 and results["b"]["problems"] == 5.0
    assert results["mean"]["avg@1"] == pytest.approx((2 / 3 + 2 / 5) / 2) and results["mean"]["problems"] == 8
    assert seen.count("0") == 2 * (1 + 4)  # greedy once and 4 samples, in both sets
    table = format_table(results)
    assert table.splitlines()[0] == "| benchmark | problems | avg@1 | avg@4 | pass@1 | pass@2 | pass@4 | score |"
    assert "| a | 3 | 66.7 | 66.7 | 66.7 | 66.7 | 66.7 | 66.7 |" in table and table.splitlines()[-1].startswith(
        "| mean | 8 | 53.3"
    )


def test_k_above_n_samples_is_refused(tmp_path, tiny):
    with pytest.raises(ValueError, match="more than the 2 samples per problem of 'a'"):
        evaluate_benchmarks(*tiny, {"a": _source(tmp_path, "a", 1)}, lambda c, a: [0.0] * len(c), n_samples=2, k=(4,))


def test_samples_per_benchmark_as_in_the_paper(tmp_path, tiny):
    """Sampled avg@n where a benchmark asks for it, greedy only elsewhere; score and mean follow."""
    benchmarks = {"aime": _source(tmp_path, "aime", 2), "math": _source(tmp_path, "math", 4)}
    calls = []

    def reward(completions, answers):
        calls.append(len(completions))
        return [1.0 if a == "0" else 0.0 for a in answers]

    results = evaluate_benchmarks(
        *tiny, benchmarks, reward, template="{question}", n_samples=0, samples={"aime": 8, "gone": 32}, k=(4, 8),
        max_new_tokens=2,
    )  # fmt: skip
    assert set(results["aime"]) == {"avg@1", "avg@8", "pass@4", "pass@8", "score", "problems", "skipped"}
    assert set(results["math"]) == {"avg@1", "score", "problems", "skipped"}
    assert calls == [2, 16, 4]  # greedy and 8 samples for aime; greedy only for math
    assert results["aime"]["score"] == results["aime"]["avg@8"] == 0.5
    assert results["math"]["score"] == results["math"]["avg@1"] == 0.25
    assert results["mean"]["score"] == pytest.approx(0.375) and results["mean"]["avg@8"] == 0.5
    assert "| math | 4 | 25.0 | - | - | - | 25.0 |" in format_table(results)
    assert flatten(results)["eval/aime/pass@8"] == 0.5


def test_local_dir_gives_each_benchmark_its_file(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    given = {"a": {"path": None, "name": "hub/a"}, "b": {"path": "/elsewhere/b.jsonl"}}
    resolved = with_local_files(given, str(tmp_path))
    assert resolved["a"]["path"] == str(tmp_path / "a.jsonl") and resolved["b"]["path"] == "/elsewhere/b.jsonl"
    assert with_local_files(given, None) == given
    with pytest.raises(FileNotFoundError, match=r"no c.jsonl for benchmark 'c'.*~eval.benchmarks.c"):
        with_local_files({"c": {"path": None}}, str(tmp_path))
