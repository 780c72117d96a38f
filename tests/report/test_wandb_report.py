"""The W&B Report object, built without a server: its runs are the sweep's group and every metric
its panels draw is one the jobs' offline W&B runs really logged."""

from __future__ import annotations

import json

import pytest
import wandb_workspaces.reports.v2 as wr

from tbrm.report.analysis import group_arms
from tbrm.report.runs import load_sweep
from tbrm.report.wandb_report import STEP, build_wandb_report, report_spec, sweep_group
from tbrm.wandb_offline import read_offline_run

pytestmark = pytest.mark.slow


def test_the_report_draws_the_sweeps_runs_and_logged_metrics(kl_sweep):
    arms = group_arms(load_sweep(kl_sweep))
    group = sweep_group(arms, "unused")
    assert group == kl_sweep.name  # run.py names a multirun's W&B group after its folder
    report = build_wandb_report(arms, "# table", project="tbrm", entity="someone", group=group, title="Sweep")
    grid = next(b for b in report.blocks if isinstance(b, wr.PanelGrid))
    (runset,) = grid.runsets
    assert runset.filters == f"Group = '{group}'" and "config.algorithm.beta" in runset.groupby
    logged = set()
    for job in (j for arm in arms for j in arm.completed):
        run = read_offline_run(next((job.dir / "wandb").glob("offline-run-*")))
        logged |= {k for row in run["history"] for k in row} | set(run["summary"])
        assert run["group"] == group
    drawn = set()
    for panel in grid.panels:
        if isinstance(panel, wr.LinePlot):
            drawn |= {panel.x, *panel.y}
        elif isinstance(panel, wr.BarPlot):
            drawn |= set(panel.metrics)
        elif isinstance(panel, wr.ScatterPlot):
            drawn.add(panel.y.name)
    assert STEP in drawn and {"val/accuracy", "train/kl_ref", "perf/step_s"} <= drawn
    assert drawn <= logged, drawn - logged
    assert any(isinstance(b, wr.MarkdownBlock) and b.text == "# table" for b in report.blocks)
    assert json.dumps(report_spec(report))  # what --wandb writes offline
