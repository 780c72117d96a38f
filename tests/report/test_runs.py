"""Jobs of real multiruns read back from disk: status (via the Hydra callback), config, metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tbrm.report.runs import COMPLETED, FAILED, INCOMPLETE, Job, load_sweep, read_job

pytestmark = pytest.mark.slow


def test_the_status_callback_records_a_failed_job_with_its_error(failed_sweep):
    sweep, proc = failed_sweep
    assert proc.returncode != 0  # Hydra re-raises the failed job's error after the sweep
    ok, bad = (json.loads((sweep / str(i) / "status.json").read_text()) for i in (0, 1))
    assert ok["status"] == COMPLETED and "algorithm.beta=0.1" in ok["overrides"]
    assert bad["status"] == FAILED and "algorithm.beta must be a number > 0" in bad["error"]
    assert "Traceback" in bad["traceback"] and not (sweep / "1" / "summary.json").exists()


def test_load_sweep_keeps_failed_jobs_with_their_config(failed_sweep):
    sweep, _ = failed_sweep
    ok, bad = load_sweep(sweep)
    assert (ok.number, ok.status, bad.number, bad.status) == (0, COMPLETED, 1, FAILED)
    assert ok.beta == 0.1 and ok.algorithm == "tbrm" and ok.override("algorithm.beta") == "0.1"
    assert ok.metrics["val/accuracy"].notna().sum() == 3  # before training, at step 2 and at step 4
    assert bad.beta == -1 and bad.algorithm == "tbrm" and bad.metrics.empty and "beta" in bad.error


def test_metrics_come_from_the_wandb_offline_run_when_there_is_no_csv(failed_sweep, tmp_path):
    sweep, _ = failed_sweep
    copy = shutil.copytree(sweep / "0", tmp_path / "0")
    from_csv = read_job(copy)
    shutil.rmtree(copy / "csv")
    from_wandb = read_job(copy)
    key = "val/accuracy"
    assert from_wandb.metrics[key].dropna().tolist() == pytest.approx(from_csv.metrics[key].dropna().tolist())
    assert from_wandb.get("algorithm.beta") == 0.1  # the config W&B recorded


def test_a_job_without_status_or_summary_is_incomplete(failed_sweep, tmp_path):
    sweep, _ = failed_sweep
    copy = shutil.copytree(sweep / "0", tmp_path / "0")
    (copy / "status.json").unlink()
    (copy / "summary.json").unlink()
    job = read_job(copy)
    assert job.status == INCOMPLETE and "interrupted" in job.error


def test_load_sweep_names_the_folder_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_sweep(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no Hydra jobs"):
        load_sweep(tmp_path)


def test_a_cut_short_file_is_named_and_the_other_jobs_are_read(failed_sweep, tmp_path):
    """What a crash or a full disk left behind (a truncated summary.json, an empty status.json) makes
    that one job failed with the file named; the report is still built over every job."""
    from tbrm.report.build import make_report

    sweep, _ = failed_sweep
    copy = shutil.copytree(sweep, tmp_path / "sweep")
    (copy / "0" / "summary.json").write_text('{"initial": {"val/acc')
    (copy / "1" / "status.json").write_text("")
    first, second = load_sweep(copy)
    assert first.status == FAILED and f"cannot read {copy / '0' / 'summary.json'}" in first.error
    assert "cut short by a crash or a full disk" in first.error
    assert second.status == FAILED and f"cannot read {copy / '1' / 'status.json'}" in second.error
    report = make_report(copy, tmp_path / "report", figures=False)
    assert "2 jobs, 0 completed, 2 failed" in report.markdown and "cannot read" in report.markdown


def test_an_interrupted_job_is_listed_with_its_signal(failed_sweep, tmp_path):
    sweep, _ = failed_sweep
    copy = shutil.copytree(sweep / "0", tmp_path / "0")
    (copy / "summary.json").unlink()
    record = {"status": "interrupted", "signal": "SIGTERM", "error": "Interrupted: SIGTERM received at step 3"}
    (copy / "status.json").write_text(json.dumps(record))
    job = read_job(copy)
    assert job.status == "interrupted" and "SIGTERM received at step 3" in job.error


def test_a_job_without_a_summary_is_named_by_its_configs_algorithm():
    """A failed RLOO job (its objective's class is GRPO) still belongs to the RLOO arm."""
    config = {"algorithm": {"_target_": "tbrm.objectives.GRPO", "name": "rloo", "advantage": "rloo"}}
    assert Job(dir=Path("."), number=0, status=FAILED, overrides=[], config=config).algorithm == "rloo"
    config = {"algorithm": {"_target_": "tbrm.objectives.PPO"}}  # an older config without a name
    assert Job(dir=Path("."), number=0, status=FAILED, overrides=[], config=config).algorithm == "ppo"
