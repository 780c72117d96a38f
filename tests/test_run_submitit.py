"""Sweeps as submitit jobs (hydra-submitit-launcher): ``hydra/launcher=local`` runs a sweep's jobs in
parallel processes; ``hydra/launcher=slurm`` writes the sbatch script of each job's resources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, run_py
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def log_span(job: Path) -> tuple[datetime, datetime]:
    """The first and last timestamps of a job's ``run.log`` (``[2026-12-02 18:15:30,435][...``)."""
    stamps = [line[1:24] for line in (job / "run.log").read_text().splitlines() if line.startswith("[20")]
    return tuple(datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))


@pytest.mark.slow
def test_a_local_sweep_runs_its_jobs_as_parallel_submitit_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    run_py(ROOT, tmp_path, "-m", "hydra/launcher=local", "seed=0,1", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}")
    jobs = [sweep / "0", sweep / "1"]
    for seed, job in enumerate(jobs):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["seed"] == seed
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2  # two submitit jobs, each its own process
    (start0, end0), (start1, end1) = map(log_span, jobs)
    assert start0 < end1 and start1 < end0, "the two jobs should overlap in time"
    proc = subprocess.run([sys.executable, "-m", "tbrm.report", str(sweep), "--out", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "seed" in report and "## Failed and incomplete jobs" not in report


def submission(monkeypatch, tmp_path, *overrides: str) -> str:
    """The sbatch script hydra-submitit-launcher's SlurmLauncher writes for the first job of
    ``python run.py -m hydra/launcher=slurm <overrides>`` (submitted to no cluster)."""
    import submitit
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext

    captured = {}

    def map_array(self, fn, *args):
        captured["executor"] = self
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    bin_dir = tmp_path / "bin"  # submitit looks for srun to tell it is on a Slurm cluster; it never runs it here
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    setup_globals()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides],
                      return_hydra_config=True)  # fmt: skip
        HydraConfig.instance().set_config(cfg)
        launcher = instantiate(cfg.hydra.launcher)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
        launcher.setup(hydra_context=context, task_function=lambda c: None, config=cfg)
        launcher.launch([["seed=0"]], initial_job_idx=0)
    return captured["executor"]._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")


def test_the_slurm_launcher_asks_for_the_resources_of_the_job(monkeypatch, tmp_path):
    script = submission(monkeypatch, tmp_path, "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                        "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90", "hydra.launcher.mem_gb=200",
                        "+hydra.launcher.additional_parameters.account=rl")  # fmt: skip
    lines = set(script.splitlines())
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --mem=200GB", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --account=rl"):  # fmt: skip
        assert line in lines, (line, script)
    assert f"#SBATCH --output={tmp_path}/.submitit/%j/%j_0_log.out" in lines  # submitit's logs beside the sweep's jobs
    assert script.rstrip().endswith("python -u -m submitit.core._submit x")  # each task (rank) runs the job


def test_a_one_device_job_is_one_slurm_task(monkeypatch, tmp_path):
    script = submission(monkeypatch, tmp_path, "trainer=gpu")
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=1" in script
