"""From jobs to arms: seeds grouped, curves aligned, means with 95% intervals.

An *arm* is one setting of a sweep run over several seeds: the jobs that agree on everything the
sweep varied except ``seed``. Its label names the algorithm, rollouts per prompt ``n`` and
``beta``, plus the other swept keys, except those that only index them: a config-group choice
they imply (``method=tbrm_n1``) or a key with fewer values than they have that they imply
(``kl_ablation.level``). A swept ``optimizer.lr`` is named, even when it varies with beta.

Intervals are Student-t 95% intervals over seeds: mean +- t(0.975, k-1) * sd / sqrt(k) for k
seeds (no interval from one seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tbrm.report.runs import COMPLETED, FAILED, Job

#: final-value metrics of each job (name -> description), in table order
FINAL_METRICS = {
    "val/accuracy": "greedy accuracy on the held-out split after training",
    "val/accuracy_sampled": "accuracy at the training temperature after training",
    "delta/accuracy": "greedy accuracy after minus before training",
    "train/kl_ref": "KL to the reference, mean of the last 5 steps (nats per sequence)",
    "train/reward_mean": "training reward, mean of the last 5 steps",
    "perf/step_s": "median seconds per RL step",
    "perf/peak_mem_gb": "peak memory (GB; process RSS on CPU, max allocated on a GPU)",
    "samples": "completions generated",
    "train_time_s": "seconds spent in training steps (validation excluded)",
    "wall_time_s": "seconds for the whole job",
}
VAL_COLUMNS = ["steps", "samples", "elapsed_s", "val/accuracy", "val/accuracy_sampled"]
SKIP_KEYS = ("seed", "algorithm.beta", "rollout.n")  # seeds are pooled; the label names beta and n
TAIL = 5


def t_interval(values) -> tuple[float, float, int]:
    """``(mean, half width of the 95% Student-t interval, count)`` of the finite values; the half
    width is NaN for fewer than two values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, 0
    if len(x) == 1:
        return float(x[0]), math.nan, 1
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()), half, len(x)


def _column(frame: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(frame[key], errors="coerce") if key in frame else pd.Series(np.nan, index=frame.index)


def train_rows(job: Job) -> pd.DataFrame:
    """The job's training-step rows (one per RL step), in logging order."""
    m = job.metrics
    if m.empty or "train/completions" not in m:
        return pd.DataFrame()
    return m[_column(m, "train/completions").notna()]


def val_curve(job: Job) -> pd.DataFrame:
    """Validation points of a job: ``steps`` (RL steps done), ``samples`` (completions generated
    so far), ``elapsed_s`` (training seconds so far), ``val/accuracy``, ``val/accuracy_sampled``.

    Each validation row is matched with the last training row logged before it, so the first
    point (run.py validates before training) has 0 steps and 0 samples.
    """
    m = job.metrics
    if m.empty or "val/accuracy" not in m:
        return pd.DataFrame(columns=VAL_COLUMNS)
    completions = _column(m, "train/completions").to_numpy()
    generated = _column(m, "train/generated").fillna(_column(m, "train/completions")).to_numpy()
    elapsed_s = _column(m, "perf/elapsed_s").to_numpy()
    step_s = _column(m, "perf/step_s").fillna(0.0).to_numpy()
    acc, acc_sampled = _column(m, "val/accuracy").to_numpy(), _column(m, "val/accuracy_sampled").to_numpy()
    points = []
    steps = samples = elapsed = 0.0
    for i in range(len(m)):
        if np.isfinite(completions[i]):  # a training step's row
            steps += 1
            samples = generated[i] if np.isfinite(generated[i]) else samples
            elapsed = elapsed_s[i] if np.isfinite(elapsed_s[i]) else elapsed + step_s[i]
        if np.isfinite(acc[i]):
            points.append(
                {
                    "steps": steps,
                    "samples": samples,
                    "elapsed_s": elapsed,
                    "val/accuracy": acc[i],
                    "val/accuracy_sampled": acc_sampled[i],
                }
            )
    return pd.DataFrame(points, columns=VAL_COLUMNS)


def final_metrics(job: Job) -> dict[str, float]:
    """The job's final values of ``FINAL_METRICS`` (NaN where the job did not log one)."""
    rows = train_rows(job)
    curve = val_curve(job)
    final = job.summary.get("final", {})
    initial = job.summary.get("initial", {})
    out = {key: math.nan for key in FINAL_METRICS}
    for key in ("val/accuracy", "val/accuracy_sampled"):
        out[key] = float(final.get(key, curve[key].iloc[-1] if len(curve) else math.nan))
    start = initial.get("val/accuracy", curve["val/accuracy"].iloc[0] if len(curve) else math.nan)
    out["delta/accuracy"] = out["val/accuracy"] - float(start)
    if len(rows):
        for key in ("train/kl_ref", "train/reward_mean"):
            out[key] = float(_column(rows, key).tail(TAIL).mean())
        out["perf/step_s"] = float(_column(rows, "perf/step_s").median())
        out["perf/peak_mem_gb"] = float(_column(rows, "perf/peak_mem_gb").max())
        out["samples"] = float(curve["samples"].iloc[-1]) if len(curve) else math.nan
        out["train_time_s"] = float(_column(rows, "perf/elapsed_s").iloc[-1])
    out["wall_time_s"] = float(job.summary.get("wall_time_s", math.nan))
    return out


@dataclass
class Arm:
    """The jobs of one sweep setting across seeds."""

    label: str
    algorithm: str
    n: int | None
    beta: float | None
    extra: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    @property
    def completed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == COMPLETED]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == FAILED]

    @property
    def family(self) -> str:
        """Algorithm and rollouts per prompt: the series an ablation's beta grid is drawn along."""
        return f"{self.algorithm} n={self.n}" if self.n is not None else self.algorithm


def _swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (the sweep's parameters), seed excluded."""
    values: dict[str, set] = {}
    for job in jobs:
        for o in job.overrides:
            if "=" in o:
                key, value = o.lstrip("+~").split("=", 1)
                values.setdefault(key, set()).add(value)
    keys = [k for k, v in values.items() if len(v) > 1 or any(j.override(k) is None for j in jobs)]
    return [k for k in keys if k not in SKIP_KEYS]


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_arms(jobs: list[Job]) -> list[Arm]:
    """Group jobs into arms (see the module docstring), in order of first appearance."""
    base = {id(j): (j.algorithm, j.n, j.beta) for j in jobs}
    named = []
    for key in _swept_keys(jobs):
        seen: dict[tuple, set] = {}
        for j in jobs:
            seen.setdefault(base[id(j)], set()).add(j.override(key))
        implied = all(len(v) == 1 for v in seen.values())  # a function of algorithm, n and beta
        # hidden: a group choice (method=...) implied by them, or an index coarser than them
        # (kl_ablation.level); shown: anything else (a swept lr, even one that varies with beta)
        coarser = len({j.override(key) for j in jobs}) < len(seen)
        if not (implied and ("." not in key or coarser)):
            named.append(key)
    arms: dict[tuple, Arm] = {}
    for j in jobs:
        extra = {k: j.override(k) for k in named}
        key = (*base[id(j)], *extra.items())
        if key not in arms:
            algorithm, n, beta = base[id(j)]
            parts = (
                [algorithm] + ([f"n={n}"] if n is not None else []) + ([f"β={_fmt(beta)}"] if beta is not None else [])
            )
            parts += [f"{k}={v}" for k, v in extra.items()]
            arms[key] = Arm(" ".join(parts), algorithm, n, beta, extra)
        arms[key].jobs.append(j)
    return list(arms.values())


def arm_table(arms: list[Arm]) -> pd.DataFrame:
    """One row per arm: seeds completed / failed, and mean, 95% half width of each final metric."""
    rows = []
    for arm in arms:
        row = {"arm": arm.label, "family": arm.family, "beta": arm.beta, "n": arm.n}
        row["seeds"] = len(arm.completed)
        row["failed"] = len(arm.failed)
        row["incomplete"] = len(arm.jobs) - len(arm.completed) - len(arm.failed)
        finals = [final_metrics(j) for j in arm.completed]
        for key in FINAL_METRICS:
            mean, half, _ = t_interval([f[key] for f in finals])
            row[key], row[f"{key} ±"] = mean, half
        rows.append(row)
    return pd.DataFrame(rows)


def band(frames: list[pd.DataFrame], x: str, y: str) -> pd.DataFrame:
    """Mean and 95% interval of ``y`` over seeds at each ``x`` all seeds share (curves of equal
    settings log at the same steps)."""
    series = [f.groupby(x)[y].mean() for f in frames if len(f) and y in f]
    if not series:
        return pd.DataFrame(columns=[x, "mean", "lo", "hi", "count"])
    table = pd.concat(series, axis=1)
    rows = []
    for value, row in table.iterrows():
        mean, half, count = t_interval(row.to_numpy())
        half = 0.0 if math.isnan(half) else half
        rows.append({x: value, "mean": mean, "lo": mean - half, "hi": mean + half, "count": count})
    return pd.DataFrame(rows)


def train_band(arm: Arm, key: str, smooth: int = 5) -> pd.DataFrame:
    """A training metric against the RL step: each seed smoothed by a trailing mean of
    ``smooth`` steps, then mean and 95% interval over seeds."""
    frames = []
    for job in arm.completed:
        rows = train_rows(job)
        if len(rows) and key in rows:
            values = _column(rows, key).rolling(smooth, min_periods=1).mean()
            frames.append(pd.DataFrame({"step": np.arange(1, len(rows) + 1), key: values.to_numpy()}))
    return band(frames, "step", key)


def at_equal(arms: list[Arm], x: str, y: str = "val/accuracy") -> tuple[float, pd.DataFrame]:
    """Each arm's ``y`` at the largest ``x`` (``samples`` or ``elapsed_s``) that every completed
    job reached, interpolated linearly between validation points; mean and 95% interval per arm."""
    curves = {arm.label: [val_curve(j) for j in arm.completed] for arm in arms}
    ends = [c[x].max() for cs in curves.values() for c in cs if len(c) > 1]
    if not ends:
        return math.nan, pd.DataFrame(columns=["arm", "mean", "±", "seeds"])
    common = float(min(ends))
    rows = []
    for label, cs in curves.items():
        values = [float(np.interp(common, c[x], c[y])) for c in cs if len(c) > 1]
        mean, half, count = t_interval(values)
        rows.append({"arm": label, "mean": mean, "±": half, "seeds": count})
    return common, pd.DataFrame(rows)
