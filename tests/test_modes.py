"""mode=eval's settings from the composed config (the runs themselves are in test_run.py)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tbrm.data.hub import MathSource
from tbrm.modes import eval_settings

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_eval_settings_resolve_local_files_and_the_subset_for_training(tmp_path):
    for name in ("aime24", "amc23"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    cfg = _cfg(tmp_path, f"eval.local_dir={tmp_path}")
    benchmarks, settings, reward = eval_settings(cfg, ["aime24", "amc23"])
    assert list(benchmarks) == ["aime24", "amc23"] and all(isinstance(b, MathSource) for b in benchmarks.values())
    assert benchmarks["amc23"].path == str(tmp_path / "amc23.jsonl")
    assert "device" not in settings and settings["samples"]["aime24"] == 32 and reward(["\\boxed{2}"], ["2"]) == [1.0]
    assert "device" in eval_settings(_cfg(tmp_path), None)[1]  # mode=eval places the model itself
    with pytest.raises(ValueError, match=r"eval.during_training names \['aime_24'\]"):
        eval_settings(cfg, ["aime_24"])
    with pytest.raises(FileNotFoundError, match="no aime25.jsonl for benchmark 'aime25'.*~eval.benchmarks.aime25"):
        eval_settings(cfg)
