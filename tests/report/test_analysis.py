"""Seeds grouped into arms, curves aligned, Student-t intervals: checked against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from tbrm.report.analysis import arm_table, at_equal, band, final_metrics, group_arms, t_interval, val_curve
from tbrm.report.runs import Job


def metrics(acc: list[float], per_step: int = 8, steps: int = 4, kl: float = 0.1) -> pd.DataFrame:
    """Validation before training, then ``steps`` training rows with a validation after every second."""
    rows = [{"step": 0, "val/accuracy": acc[0], "val/accuracy_sampled": acc[0] / 2}]
    for s in range(steps):
        rows.append(
            {
                "step": s,
                "train/completions": per_step * (s + 1),
                "train/generated": per_step * (s + 1),
                "perf/elapsed_s": 1.5 * (s + 1),
                "perf/step_s": 1.5,
                "perf/peak_mem_gb": 1.0 + s,
                "train/kl_ref": kl * (s + 1),
                "train/reward_mean": 0.5,
            }
        )
        if s % 2 == 1:
            rows.append({"step": s, "val/accuracy": acc[(s + 1) // 2], "val/accuracy_sampled": acc[(s + 1) // 2] / 2})
    return pd.DataFrame(rows)


def job(
    number: int,
    overrides: list[str],
    *,
    algorithm="TBRM",
    n=1,
    beta=0.05,
    seed=0,
    acc=(0.5, 0.6, 0.7),
    status="completed",
    **kw,
):
    config = {
        "algorithm": {"_target_": f"tbrm.objectives.{algorithm}", "beta": beta},
        "rollout": {"n": n},
        "seed": seed,
    }
    summary = (
        {"initial": {"val/accuracy": acc[0]}, "final": {"val/accuracy": acc[-1]}, "wall_time_s": 9.0}
        if status == "completed"
        else {}
    )
    return Job(
        Path(f"/sweep/{number}"),
        number,
        status,
        overrides,
        config,
        summary,
        metrics(list(acc), **kw) if summary else pd.DataFrame(),
    )


def test_t_interval_matches_the_student_t_formula():
    mean, half, count = t_interval([1.0, 2.0, 3.0])
    # sd = 1, t(0.975, 2) = 4.302652729911275
    assert (mean, count) == (2.0, 3) and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert t_interval([0.4])[:1] == (0.4,) and math.isnan(t_interval([0.4])[1])
    assert t_interval([float("nan"), None, 2.0, 4.0])[0] == 3.0
    assert t_interval([])[2] == 0


def test_validation_points_carry_the_steps_samples_and_time_before_them():
    curve = val_curve(job(0, []))
    assert curve["steps"].tolist() == [0, 2, 4]
    assert curve["samples"].tolist() == [0, 16, 32]
    assert curve["elapsed_s"].tolist() == [0, 3.0, 6.0]
    assert curve["val/accuracy"].tolist() == [0.5, 0.6, 0.7]


def test_final_metrics_read_the_summary_and_the_last_steps():
    final = final_metrics(job(0, [], kl=0.1))
    assert final["val/accuracy"] == 0.7 and final["delta/accuracy"] == pytest.approx(0.2)
    assert final["train/kl_ref"] == pytest.approx(0.25)  # mean of 0.1..0.4 (all 4 of the last 5)
    assert final["perf/peak_mem_gb"] == 4.0 and final["samples"] == 32 and final["train_time_s"] == 6.0


def test_arms_group_seeds_and_name_only_what_algorithm_n_and_beta_do_not_say():
    jobs = [
        job(i, [f"method={m}", f"kl_ablation.level={lv}", f"seed={s}"], algorithm=a, n=n, beta=b, seed=s)
        for i, (m, a, n, lv, b, s) in enumerate(
            (m, a, n, lv, b, s)
            for (m, a, n, grid) in (("tbrm_n1", "TBRM", 1, (0.05, 0.2)), ("grpo_n4", "GRPO", 4, (0.0, 0.04)))
            for lv, b in enumerate(grid)
            for s in (0, 1)
        )
    ]
    arms = group_arms(jobs)
    assert [a.label for a in arms] == ["tbrm n=1 β=0.05", "tbrm n=1 β=0.2", "grpo n=4 β=0", "grpo n=4 β=0.04"]
    assert all(len(a.jobs) == 2 for a in arms) and arms[2].family == "grpo n=4"
    # a swept learning rate is not told apart by algorithm, n and beta: it is named
    lr_jobs = [
        job(i, [f"optimizer.lr={lr}", f"seed={s}"], seed=s)
        for i, (lr, s) in enumerate([(1e-4, 0), (1e-4, 1), (3e-4, 0)])
    ]
    assert [a.label for a in group_arms(lr_jobs)] == [
        "tbrm n=1 β=0.05 optimizer.lr=0.0001",
        "tbrm n=1 β=0.05 optimizer.lr=0.0003",
    ]
    # an Optuna search varies lr and beta together: the lr is still named
    trials = [
        job(i, [f"optimizer.lr={lr}", f"algorithm.beta={b}"], beta=b)
        for i, (lr, b) in enumerate([(1e-4, 0.1), (2e-4, 0.3)])
    ]
    assert [a.label for a in group_arms(trials)] == [
        "tbrm n=1 β=0.1 optimizer.lr=0.0001",
        "tbrm n=1 β=0.3 optimizer.lr=0.0002",
    ]


def test_arm_table_counts_failed_seeds_and_gives_intervals():
    jobs = [
        job(0, ["seed=0"], acc=(0.5, 0.6, 0.6)),
        job(1, ["seed=1"], acc=(0.5, 0.6, 0.8), seed=1),
        job(2, ["seed=2"], seed=2, status="failed"),
    ]
    row = arm_table(group_arms(jobs)).iloc[0]
    assert (row["seeds"], row["failed"], row["incomplete"]) == (2, 1, 0)
    assert row["val/accuracy"] == pytest.approx(0.7)
    assert row["val/accuracy ±"] == pytest.approx(12.706204736174698 * 0.1414213562 / math.sqrt(2), rel=1e-6)


def test_at_equal_interpolates_each_seed_at_the_budget_every_job_reached():
    fast = [job(0, ["algorithm=tbrm", "seed=0"], acc=(0.5, 0.7, 0.9), per_step=8)]
    slow = [job(1, ["algorithm=grpo", "seed=0"], algorithm="GRPO", n=4, acc=(0.5, 0.6, 0.7), per_step=4)]
    x, frame = at_equal(group_arms(fast + slow), "samples")
    assert x == 16  # the slow arm reached 16 samples; the fast one passed 16 at its first validation
    assert dict(zip(frame["arm"], frame["mean"], strict=True)) == pytest.approx(
        {"tbrm n=1 β=0.05": 0.7, "grpo n=4 β=0.05": 0.7}
    )


def test_band_is_the_mean_and_interval_at_shared_steps():
    frames = [pd.DataFrame({"step": [1, 2], "y": [1.0, 2.0]}), pd.DataFrame({"step": [1, 2], "y": [3.0, 2.0]})]
    b = band(frames, "step", "y")
    assert b["mean"].tolist() == [2.0, 2.0] and b["lo"].iloc[1] == b["hi"].iloc[1] == 2.0
    assert b["hi"].iloc[0] - b["mean"].iloc[0] == pytest.approx(12.706204736174698 * math.sqrt(2) / math.sqrt(2))
