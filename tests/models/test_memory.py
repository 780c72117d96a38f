"""Per-rank memory of each algorithm's models, from a model's size."""

import pytest
from conftest import save_tiny_model

from tbrm.models.memory import count_params, rank_memory_gb, table


def test_bytes_per_parameter_of_each_algorithm():
    tbrm = rank_memory_gb(1e9, "tbrm")
    assert tbrm == {"policy": 16.0, "reference": 2.0, "total": 18.0}  # fp32 weights+grads+2 moments, bf16 ref
    ppo = rank_memory_gb(1e9, "ppo", vllm=True)
    assert ppo["critic"] == 16.0 and ppo["vllm"] == 2.0 and ppo["total"] == 36.0
    assert rank_memory_gb(1e9, "grpo", dtype="bfloat16")["policy"] == 8.0
    sharded = rank_memory_gb(1e9, "ppo", shards=4)  # 16 / 4 kept, plus 8 gathered in a step
    assert sharded["policy"] == sharded["critic"] == 12.0 and sharded["reference"] == 2.0
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'"):
        rank_memory_gb(1e9, "dpo")


def test_parameters_are_counted_from_the_config_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_model(tmp_path / "tiny")
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert count_params(str(path)) == sum(p.numel() for p in loaded.parameters()) > 0


def test_the_table_has_a_row_per_model_and_algorithm():
    rows = table({"m": 1e9}).splitlines()
    assert rows[2] == "| m | tbrm | 16.0 | 2.0 | - | 2.0 | 20.0 | 16.0 |" and len(rows) == 5
