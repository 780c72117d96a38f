"""The report over real multiruns: failed jobs named, arms with intervals, figures, report.json."""

from __future__ import annotations

import json
import math

import pytest

from tbrm.report.build import fmt, make_report

pytestmark = pytest.mark.slow


def test_fmt():
    assert fmt(0.62345, 0.0211) == "0.623 ± 0.021" and fmt(0.5) == "0.500" and fmt(math.nan) == "-"
    assert fmt(16000.0, 0.0, 0) == "16,000 ± 0"


def test_a_sweep_with_a_failed_job_reports_it(failed_sweep, tmp_path):
    sweep, _ = failed_sweep
    report = make_report(sweep, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "2 jobs, 1 completed, 1 failed, 0 incomplete" in text
    assert "## Failed and incomplete jobs" in text and "algorithm.beta=-1" in text
    assert "algorithm.beta must be a number > 0" in text
    assert [j.number for j in report.failed] == [1]
    record = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [j["status"] for j in record["jobs"]] == ["completed", "failed"]
    row = report.table.set_index("arm").loc["tbrm n=1 β=0.1"]
    assert row["seeds"] == 1 and 0 <= row["val/accuracy"] <= 1


def test_the_kl_ablation_report_compares_betas_with_intervals(kl_sweep, tmp_path):
    report = make_report(kl_sweep, tmp_path)
    table = report.table.set_index("arm")
    assert list(table.index) == ["tbrm n=1 β=0.05", "tbrm n=1 β=0.2", "grpo n=4 β=0", "grpo n=4 β=0.04"]
    assert (table["seeds"] == 2).all() and (table["failed"] == 0).all()
    for key in ("val/accuracy", "train/kl_ref", "perf/step_s"):
        assert table[key].notna().all() and table[f"{key} ±"].notna().all()
    # the reference is loaded at beta = 0 too (track_kl_ref): without it GRPO logs no train/kl_ref
    assert table.loc["grpo n=4 β=0", "train/kl_ref"] >= 0
    assert set(report.figures) == {"learning_curves", "beta_sweep", "efficiency", "cost"}
    for path in report.figures.values():
        assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    x, frame = report.equal_samples
    # TBRM: 4 steps x 8 prompts x 1 = 32 completions; GRPO: 4 x 8 groups x 4 = 128, read at 32
    assert x == 32 and len(frame) == 4
    text = report.markdown
    assert "At equal samples" in text and "At equal training time" in text and "Highest: **" in text
    assert "![beta_sweep](beta_sweep.png)" in text
