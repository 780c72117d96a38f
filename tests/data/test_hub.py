import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tbrm.data.hub import DEFAULT_TEMPLATE, BadRowError, MathSource, MathTask, get_any, get_field, render_prompt

# local copy -> (source config, rows, first answer); counts from the data folder's README
LOCAL = {
    "gsm8k_train": ("gsm8k_train", 7473, "72"),
    "gsm8k_test": ("gsm8k_test", 1319, "18"),
    "math500": ("math500", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
    "aime24": ("aime24", 30, "204"),
    "amc23": ("amc23", 40, "27"),
    "minerva_math": ("minerva_math", 272, "1.6"),
    "olympiadbench": ("olympiadbench", 675, "2"),
    "svamp": ("svamp", 1000, "145"),
}


@pytest.mark.parametrize("config,file", [(v[0], k) for k, v in LOCAL.items()])
def test_every_source_config_reads_its_local_copy(repo_root, math_data_dir, config, file):
    cfg = OmegaConf.load(repo_root / "conf/data/source" / f"{config}.yaml")
    cfg.path = str(math_data_dir / f"{file}.jsonl")
    source = instantiate(cfg)
    records, skipped = source.records()
    _, rows, first_answer = LOCAL[file]
    assert (len(records), skipped) == (rows, 0)
    assert records[0]["answer"] == first_answer
    assert records[0]["prompt"] == DEFAULT_TEMPLATE.replace("{question}", records[0]["question"])
    assert all(r["question"] and r["answer"] for r in records)


def test_hub_names_and_fields_for_the_training_sets(repo_root):
    names = {p.stem: OmegaConf.load(p).name for p in (repo_root / "conf/data/source").glob("*.yaml")}
    assert names["dapo17k"] == "BytedTsinghua-SIA/DAPO-Math-17k" and names["math500"] == "HuggingFaceH4/MATH-500"
    assert {"gsm8k_train", "math_train", "dapo17k", "aime24", "aime25", "amc23", "minerva_math"} <= set(names)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_nested_fields_as_in_dapo(tmp_path):
    row = {"prompt": [{"role": "user", "content": "What is 2+2?"}], "reward_model": {"ground_truth": "4"}}
    assert get_field(row, "prompt.0.content") == "What is 2+2?"
    assert get_field(row, "reward_model.ground_truth") == "4"
    assert get_field(row, "prompt.3.content") is None and get_field(row, "missing.x") is None
    source = MathSource(
        path=str(_write(tmp_path / "d.jsonl", [row])), question="prompt.0.content", answer="reward_model.ground_truth"
    )
    assert source.records("Q: {question}")[0] == [
        {"prompt": "Q: What is 2+2?", "answer": "4", "question": "What is 2+2?"}
    ]


DAPO_WRAPPER = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


def test_dapo_config_unwraps_questions_and_drops_repeats(repo_root, tmp_path):
    """The hub's DAPO-Math-17k: DAPO's "Answer:" wrapper around each problem, every problem repeated."""
    rows = [
        {"prompt": [{"role": "user", "content": DAPO_WRAPPER.format(q)}], "reward_model": {"ground_truth": a}}
        for q, a in [("What is $1+1$?\n\nGive a number.", "2"), ("Compute $3^2$.", "9")]
    ]
    rows.append(
        {"prompt": [{"role": "user", "content": "An unwrapped question?"}], "reward_model": {"ground_truth": "1"}}
    )
    cfg = OmegaConf.load(repo_root / "conf/data/source/dapo17k.yaml")
    cfg.path = str(_write(tmp_path / "dapo.jsonl", rows * 3))
    records, skipped = instantiate(cfg).records()
    assert [r["question"] for r in records] == [
        "What is $1+1$?\n\nGive a number.",
        "Compute $3^2$.",
        "An unwrapped question?",
    ]
    assert [r["answer"] for r in records] == ["2", "9", "1"] and skipped == 0
    cfg.dedupe = False
    assert len(instantiate(cfg).records()[0]) == 9
    with pytest.raises(ValueError, match="needs a group"):
        MathSource(path="x.jsonl", question_regex="Answer:")
    with pytest.raises(ValueError, match="not a regular expression"):
        MathSource(path="x.jsonl", question_regex="(")


def test_field_alternatives_read_either_schema(tmp_path):
    """Minerva Math as on the hub (question, answer) and as some copies have it (problem, solution)."""
    hub = {"question": "Q1", "answer": "1.6"}
    local = {"problem": "Q2", "solution": "so $x = \\boxed{3}$.", "answer": ""}
    assert get_any(hub, "question|problem") == "Q1" and get_any(local, "question|problem") == "Q2"
    assert get_any(local, "answer|solution").endswith("$.") and get_any({}, "a|b") is None
    source = MathSource(path=str(_write(tmp_path / "m.jsonl", [hub, local])), question="question|problem",
                        answer="answer|solution", answer_format="boxed_if_any")  # fmt: skip
    assert [(r["question"], r["answer"]) for r in source.records()[0]] == [("Q1", "1.6"), ("Q2", "3")]


def test_bad_rows_fail_with_file_and_row_or_are_counted(tmp_path):
    rows = [
        {"problem": "ok", "answer": "1"},
        {"problem": "no answer"},
        {"problem": "", "answer": "2"},
        {"problem": "wrong type", "answer": {"x": 1}},
        {"problem": "numbers are fine", "answer": 3.0},
    ]
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BadRowError, match=r"bad\.jsonl, row 1: no answer in field 'answer'.*skip_bad_rows=true"):
        MathSource(path=str(path)).records()
    records, skipped = MathSource(path=str(path)).records(skip_bad_rows=True)
    assert [r["answer"] for r in records] == ["1", "3"] and skipped == 3
    task = MathTask(
        train=MathSource(path=str(path)), validation=MathSource(path=str(path), limit=1), skip_bad_rows=True
    )
    assert {k: len(v) for k, v in task.splits().items()} == {"train": 2, "validation": 1, "test": 0}
    assert task.skipped == {"train": 3, "validation": 0, "test": 0}


def test_missing_or_unknown_files_and_bad_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl does not exist"):
        MathSource(path=str(tmp_path / "nowhere.jsonl")).records()
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        MathSource(path=str(tmp_path / "x.txt")).records()
    with pytest.raises(ValueError, match="answer_format must be one of"):
        MathSource(path="x.jsonl", answer_format="last")
    with pytest.raises(ValueError, match="hub `name` or a local `path`"):
        MathSource()
    with pytest.raises(ValueError, match="must be one of .* or a string with {question}"):
        MathTask(template="no placeholder")


def test_parquet_files_load_through_datasets(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}]).to_parquet(str(tmp_path / "q.parquet"))
    source = MathSource(path=str(tmp_path / "q.parquet"), question="question", answer_format="hash")
    assert source.records()[0][0]["answer"] == "2"


def test_gsm8k_data_config_yields_prompt_batches(repo_root, math_data_dir, tmp_path):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "data=gsm8k",
                f"data.task.train.path={math_data_dir / 'gsm8k_train.jsonl'}",
                f"data.task.validation.path={math_data_dir / 'gsm8k_test.jsonl'}",
                "data.batch_size=4",
                f"paths.output_dir={tmp_path}",
            ],
        )
    datamodule = instantiate(cfg.data)
    batch = next(iter(datamodule.train_dataloader()))
    assert len(batch["prompt"]) == 4 and all(p.endswith("within \\boxed{}.") for p in batch["prompt"])
    val = next(iter(datamodule.val_dataloader()))
    assert val["answer"][0] == "18"
    reward = instantiate(OmegaConf.load(repo_root / "conf/reward/math_verify.yaml"))
    assert reward(["... so \\boxed{18}"], val["answer"][:1]) == [1.0]


def test_prompt_templates(tiny_model_dir, tmp_path):
    plain = render_prompt("What is 2+2?")
    assert plain == "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert render_prompt("2+2?", "Q: {question} A:") == "Q: 2+2? A:"
    chatml = render_prompt("What is 2+2?", "qwen_math")  # no tokenizer: Qwen's ChatML written out
    assert chatml == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    tokenizer.save_pretrained(tmp_path / "tok")
    rendered = "[system] " + plain.split("\n")[1] + "\n[user] 2+2?\n[assistant] "
    assert render_prompt("2+2?", "qwen_math", tokenizer) == rendered
    path = _write(tmp_path / "q.jsonl", [{"problem": "2+2?", "answer": "4"}])
    task = MathTask(train=MathSource(path=str(path)), template="qwen_math", tokenizer=str(tmp_path / "tok"))
    assert task.splits()["train"][0]["prompt"] == rendered  # the task loads the tokenizer by name
