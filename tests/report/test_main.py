"""``python -m tbrm.report``: prints the markdown, writes the report, builds the W&B spec offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_cli_on_a_sweep_with_a_failed_job(failed_sweep, tmp_path):
    sweep, _ = failed_sweep
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "tbrm.report", str(sweep), "--out", str(tmp_path), "--wandb", "--entity", "me"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "## Failed and incomplete jobs" in proc.stdout and (tmp_path / "report.md").exists()
    assert "report not saved" in proc.stdout
    spec = json.loads((tmp_path / "wandb_report.json").read_text())
    assert spec["entity"] == "me" and spec["project"] == "tbrm"


def test_cli_names_a_wrong_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tbrm.report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "no Hydra jobs" in proc.stderr
