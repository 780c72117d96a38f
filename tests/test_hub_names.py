"""Models and data sets by hub name through run.py, as a user with a Hugging Face cache runs them:
the cache folder is built in the test (``hub_cache``) and every run is offline (``HF_HUB_OFFLINE=1``),
so the names resolve exactly as ``from_pretrained`` / ``load_dataset`` resolve them after a download."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, hub_cache, hub_model, run_py

pytestmark = pytest.mark.slow


def offline(cache: Path) -> dict:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache.parent / "datasets")}


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def test_train_a_model_given_by_hub_name(tiny_model_dir, tmp_path):
    hub_model(tmp_path / "hub", "acme/tiny-arith", tiny_model_dir)
    run_py(ROOT, tmp_path, "model.name_or_path=acme/tiny-arith", "trainer.max_steps=2", env=offline(tmp_path / "hub"))
    out = only((tmp_path / "logs/train/runs").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_path"] == "acme/tiny-arith" and summary["steps"] == 2
    assert not (tmp_path / "cache" / "warm_start").exists()  # the hub model, not the embedded warm start


def test_a_hub_name_missing_from_the_cache_fails_fast_and_says_so(tmp_path):
    proc = run_py(ROOT, tmp_path, "model.name_or_path=acme/not-cached", check=False, env=offline(tmp_path / "hub"))
    assert proc.returncode == 1
    assert "model.name_or_path='acme/not-cached' is not in the Hugging Face cache" in proc.stderr
    assert "HF_HUB_OFFLINE=1" in proc.stderr and "hf download acme/not-cached" in proc.stderr


def _cache_sets(math_data_dir: Path, cache: Path, tmp: Path) -> None:
    """The paper preset's data sets under their hub names: a DAPO-Math-17k-shaped train file, and
    MATH-500, AIME24 and AMC23 from the local copies, split names as on the hub."""
    from test_run import _dapo_copy

    dapo = _dapo_copy(math_data_dir, tmp / "d.jsonl")
    hub_cache(cache, "BytedTsinghua-SIA/DAPO-Math-17k", {"data/train.jsonl": dapo}, repo_type="dataset")
    for name, local, split in (
        ("HuggingFaceH4/MATH-500", "math500", "test"),
        ("HuggingFaceH4/aime_2024", "aime24", "train"),
        ("math-ai/amc23", "amc23", "test"),
    ):
        hub_cache(cache, name, {f"{split}.jsonl": math_data_dir / f"{local}.jsonl"}, repo_type="dataset")


def test_paper_preset_as_written_with_its_hub_model_and_hub_data(math_data_dir, qwen2_model_dir, tmp_path):
    """experiment=paper/tbrm_n1 with no path override: Qwen/Qwen2.5-Math-1.5B (a Qwen2 stand-in in the
    cache under that name), DAPO-Math-17k, MATH-500, AIME24 and AMC23 all by hub name, offline."""
    cache = tmp_path / "hub"
    hub_model(cache, "Qwen/Qwen2.5-Math-1.5B", qwen2_model_dir)
    _cache_sets(math_data_dir, cache, tmp_path)
    sizes = ["data.task.validation.limit=4", "eval.benchmarks.aime24.limit=2", "eval.benchmarks.amc23.limit=2",
             "eval.samples.aime24=2", "eval.samples.amc23=2", "eval.k=[2]", "data.batch_size=4",
             "rollout.max_new_tokens=6", "update.micro_batch_size=4", "trainer.accelerator=cpu",
             "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=csv"]  # fmt: skip
    run_py(ROOT, tmp_path, "experiment=paper/tbrm_n1", *sizes, tiny=[], env=offline(cache))
    out = only((tmp_path / "logs/train/runs").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_path"] == "Qwen/Qwen2.5-Math-1.5B" and summary["steps"] == 2
    assert set(summary["benchmarks"]["2"]) == {"aime24", "amc23", "mean"}
    config = yaml.safe_load((out / ".hydra/config.yaml").read_text())
    assert (
        config["data"]["task"]["train"]["path"] is None and config["model"]["name_or_path"] == "Qwen/Qwen2.5-Math-1.5B"
    )
    assert "16 distinct questions (32 rows read)" in (out / "run.log").read_text()
    rows = list(csv.DictReader(open(out / "csv/metrics.csv")))
    assert max(float(r["train/completions"]) for r in rows if r.get("train/completions")) == 8


def test_task_eval_by_hub_names(math_data_dir, qwen2_model_dir, tmp_path):
    cache = tmp_path / "hub"
    hub_model(cache, "acme/qwen-standin", qwen2_model_dir)
    _cache_sets(math_data_dir, cache, tmp_path)
    run_py(ROOT, tmp_path, "mode=eval", "model.name_or_path=acme/qwen-standin", "~eval.benchmarks.aime25",
           "~eval.benchmarks.minerva_math", "~eval.benchmarks.olympiadbench", "~eval.benchmarks.gsm8k_test",
           *[f"eval.benchmarks.{b}.limit=2" for b in ("aime24", "amc23", "math500")], "eval.samples.aime24=2",
           "eval.samples.amc23=2", "eval.k=[2]", "rollout.max_new_tokens=6", tiny=[], env=offline(cache))  # fmt: skip
    out = only((tmp_path / "logs/eval/runs").iterdir())
    results = json.loads((out / "eval.json").read_text())
    assert results["policy"] == "acme/qwen-standin" and list(results["results"]) == [
        "aime24",
        "amc23",
        "math500",
        "mean",
    ]
