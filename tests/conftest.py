"""Shared fixtures: a tiny random-init model saved with save_pretrained, repository paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random-init Llama and its character tokenizer, written with save_pretrained."""
    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.models.tiny import build_char_tokenizer, build_tiny_model

    path = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_char_tokenizer(ArithmeticTask().alphabet())
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qwen2_model_dir(tmp_path_factory) -> Path:
    """A tiny random-init model of the Qwen2 architecture and a byte-level BPE Qwen2Tokenizer with
    a chat template, written with save_pretrained (``tbrm.models.standin``)."""
    from tbrm.models.standin import save_qwen2_standin

    return save_qwen2_standin(tmp_path_factory.mktemp("qwen2_model"), "tiny", dtype="float32")


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """Never reach a W&B server from tests; keep wandb's own files inside the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("TBRM_TEST_WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def math_data_dir() -> Path:
    """The local benchmark files (``TBRM_MATH_DATA``, default ``../shared/data/math``).

    Missing files fail the test under CI (``CI=true``) and skip it elsewhere, so a checkout
    without the folder still runs its suite.
    """
    path = Path(os.environ.get("TBRM_MATH_DATA", ROOT.parent / "shared" / "data" / "math"))
    if not (path / "math500.jsonl").exists():
        reason = f"benchmark files not found in {path}; set TBRM_MATH_DATA to the folder that holds math500.jsonl"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
