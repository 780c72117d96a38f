"""A sweep's report: figures, ``report.md`` and ``report.json`` from one multirun directory.

    python -m tbrm.report logs/train/multiruns/<time>            # writes <that dir>/report/
    python -m tbrm.report <dir> --out reports/kl --wandb           # + the W&B Report (online)

The report answers two questions with intervals over seeds: how each algorithm's accuracy and KL
to the reference move with beta (``beta_sweep.png`` and the table), and which algorithm is best at
equal samples and at equal training time (``efficiency.png`` and the two "at equal" tables).
Failed and interrupted jobs are listed with their errors, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tbrm.io import atomic_path, write_json, write_text
from tbrm.report.analysis import FINAL_METRICS, Arm, arm_table, at_equal, group_arms
from tbrm.report.runs import COMPLETED, Job, json_safe, load_sweep

#: the table's columns: (metric, header, digits)
COLUMNS = [
    ("val/accuracy", "greedy acc", 3),
    ("val/accuracy_sampled", "sampled acc", 3),
    ("delta/accuracy", "Δ greedy", 3),
    ("train/kl_ref", "KL to ref", 3),
    ("train/reward_mean", "train reward", 3),
    ("perf/step_s", "s / step", 2),
    ("perf/peak_mem_gb", "peak GB", 2),
    ("samples", "samples", 0),
]


@dataclass
class SweepReport:
    """Everything a report holds; ``markdown`` is what ``report.md`` contains."""

    sweep_dir: Path
    jobs: list[Job]
    arms: list[Arm]
    table: pd.DataFrame
    equal_samples: tuple[float, pd.DataFrame]
    equal_time: tuple[float, pd.DataFrame]
    figures: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status != COMPLETED]


def fmt(mean: float, half: float = math.nan, digits: int = 3) -> str:
    """``0.623 ± 0.021``; just the mean for one seed; ``-`` when there is no value."""
    if mean is None or not math.isfinite(mean):
        return "-"
    text = f"{mean:,.{digits}f}"
    return text if half is None or not math.isfinite(half) else f"{text} ± {half:,.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _best(frame: pd.DataFrame) -> str:
    """Which arm is ahead, and whether its interval clears the runner-up's."""
    frame = frame[frame["mean"].notna()].sort_values("mean", ascending=False)
    if frame.empty:
        return "No arm has two validation points yet."
    top = frame.iloc[0]
    text = f"Highest: **{top['arm']}** ({fmt(top['mean'], top['±'])})."
    if len(frame) > 1:
        second = frame.iloc[1]
        lo = top["mean"] - (0 if math.isnan(top["±"]) else top["±"])
        hi = second["mean"] + (0 if math.isnan(second["±"]) else second["±"])
        if math.isnan(top["±"]) or math.isnan(second["±"]):
            text += " One seed: no interval, so no ranking claim."
        elif lo > hi:
            text += f" Its 95% interval lies above that of the runner-up, {second['arm']}."
        else:
            text += f" Its 95% interval overlaps that of the runner-up, {second['arm']}: not separated at this budget."
    return text


def render_markdown(report: SweepReport, command: str) -> str:
    jobs = report.jobs
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "incomplete", "interrupted")}
    interrupted = f", {counts['interrupted']} interrupted" if counts["interrupted"] else ""
    parts = [
        f"# Sweep report: {report.sweep_dir.name}",
        f"`{report.sweep_dir}`: {len(jobs)} jobs, {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['incomplete']} incomplete{interrupted}. Values are means over seeds with 95% Student-t intervals "
        f"(mean ± t·sd/√k over k seeds). Reproduce: `{command}`",
    ]
    if report.failed:
        rows = [
            [str(j.number), j.status, " ".join(j.overrides), (j.error or "-").replace("|", "\\|")[:300]]
            for j in report.failed
        ]
        parts += ["## Failed and incomplete jobs", _md_table(["job", "status", "overrides", "error"], rows)]
    rows = []
    for _, r in report.table.iterrows():
        cells = [r["arm"], f"{r['seeds']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")]
        cells += [fmt(r[key], r[f"{key} ±"], digits) for key, _, digits in COLUMNS]
        rows.append(cells)
    parts += [
        "## Final metrics",
        _md_table(["arm", "seeds", *(h for _, h, _ in COLUMNS)], rows),
        "Columns: " + "; ".join(f"{h}: {FINAL_METRICS[k]}" for k, h, _ in COLUMNS) + ".",
    ]
    for title, (x, frame), unit in (
        ("At equal samples", report.equal_samples, "completions generated"),
        ("At equal training time", report.equal_time, "s of training steps"),
    ):
        if frame.empty or not math.isfinite(x):
            continue
        body = [[r["arm"], fmt(r["mean"], r["±"]), str(r["seeds"])] for _, r in frame.iterrows()]
        parts += [
            f"## {title}: greedy accuracy at {x:,.0f} {unit}",
            _md_table(["arm", "val/accuracy", "seeds"], body),
            _best(frame),
        ]
    if report.figures:
        parts.append("## Figures")
        parts += [f"![{name}]({path.name})" for name, path in report.figures.items()]
    return "\n\n".join(parts) + "\n"


def make_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, figures: bool = True) -> SweepReport:
    """Read a multirun directory and write its report (figures, ``report.md``, ``report.json``)
    to ``out_dir`` (default ``<sweep_dir>/report``)."""
    sweep_dir = Path(sweep_dir).resolve()
    jobs = load_sweep(sweep_dir)
    arms = group_arms(jobs)
    out = Path(out_dir) if out_dir else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = SweepReport(
        sweep_dir=sweep_dir,
        jobs=jobs,
        arms=arms,
        table=arm_table(arms),
        equal_samples=at_equal(arms, "samples"),
        equal_time=at_equal(arms, "elapsed_s"),
    )
    if figures:
        import matplotlib.pyplot as plt

        from tbrm.report.plots import FIGURES

        for name, draw in FIGURES.items():
            fig = draw(arms)
            if fig is not None:
                report.figures[name] = out / f"{name}.png"
                with atomic_path(report.figures[name]) as tmp:
                    fig.savefig(tmp, dpi=120, format="png")
                plt.close(fig)
    report.markdown = render_markdown(report, f"python -m tbrm.report {sweep_dir}")
    write_text(out / "report.md", report.markdown)
    record = {
        "sweep_dir": str(sweep_dir),
        "jobs": [
            {"number": j.number, "status": j.status, "overrides": j.overrides, "error": j.error, "dir": str(j.dir)}
            for j in jobs
        ],
        "arms": report.table.to_dict(orient="records"),
        "equal_samples": {"x": report.equal_samples[0], "arms": report.equal_samples[1].to_dict(orient="records")},
        "equal_time": {"x": report.equal_time[0], "arms": report.equal_time[1].to_dict(orient="records")},
        "figures": {k: str(v) for k, v in report.figures.items()},
    }
    write_json(out / "report.json", json_safe(record))
    return report
