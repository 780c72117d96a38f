"""The sweep's comparison as a W&B Report (``wandb-workspaces``), built from the same arms.

The report filters the project's runs to the sweep's group (run.py names a multirun's W&B group
after its folder), groups them by the keys that tell the arms apart, and shows the panels of the
PNG report that W&B can draw from logged metrics: validation accuracy, reward and KL curves with
seed bands, final accuracy and KL against beta, step time and memory, and the report's markdown.
Building needs no server; ``save()`` needs W&B online (``WANDB_MODE`` unset or ``online``).
"""

from __future__ import annotations

from tbrm.report.analysis import Arm
from tbrm.report.runs import offline_run

STEP = "trainer/global_step"  # Lightning's WandbLogger x-axis


def sweep_group(arms: list[Arm], default: str) -> str:
    """The W&B group of the sweep's runs: the group their offline runs recorded, else ``default``."""
    for arm in arms:
        for job in arm.completed:
            run = offline_run(job.dir)
            if run and run.get("group"):
                return run["group"]
    return default


def group_keys(arms: list[Arm]) -> list[str]:
    """Config keys that tell the arms apart: the algorithm, ``rollout.n``, ``algorithm.beta`` and
    any other swept key the arm labels name."""
    keys = ["algorithm._target_", "rollout.n", "algorithm.beta"]
    for arm in arms:
        keys += [k for k in arm.extra if k not in keys]
    return keys


def build_wandb_report(arms: list[Arm], markdown: str, *, project: str, entity: str, group: str, title: str):
    """A ``wandb_workspaces.reports.v2.Report`` comparing the sweep's arms (not saved)."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(
        entity=entity,
        project=project,
        name=group,
        filters=f"Group = '{group}'",
        groupby=[f"config.{k}" for k in group_keys(arms)],
    )

    def curve(metric: str, title: str, smoothing: float | None = None):
        return wr.LinePlot(
            title=title,
            x=STEP,
            y=[metric],
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
            smoothing_factor=smoothing,
            smoothing_type="exponential" if smoothing else None,
        )

    panels = [
        curve("val/accuracy", "greedy validation accuracy"),
        curve("val/accuracy_sampled", "sampled validation accuracy"),
        curve("train/reward_mean", "training reward", 0.6),
        curve("train/kl_ref", "KL to the reference (nats)", 0.6),
        wr.ScatterPlot(
            title="final accuracy vs beta", x=wr.Config("algorithm.beta"), y=wr.SummaryMetric("val/accuracy")
        ),
        wr.ScatterPlot(title="final KL vs beta", x=wr.Config("algorithm.beta"), y=wr.SummaryMetric("train/kl_ref")),
        wr.BarPlot(
            title="seconds per step", metrics=["perf/step_s"], groupby_aggfunc="mean", groupby_rangefunc="stderr"
        ),
        wr.BarPlot(title="peak memory (GB)", metrics=["perf/peak_mem_gb"], groupby_aggfunc="mean"),
    ]
    return wr.Report(
        project=project,
        entity=entity,
        title=title[:128],
        description=f"Runs of the W&B group {group}, grouped by {', '.join(group_keys(arms))}.",
        blocks=[
            wr.H1(text=title[:128]),
            wr.PanelGrid(runsets=[runset], panels=panels),
            wr.MarkdownBlock(text=markdown),
        ],
    )


def report_spec(report) -> dict:
    """The report object as JSON-ready data (what ``--wandb`` writes when W&B is offline: turning
    it into W&B's own spec looks the project up on the server)."""
    from pydantic import TypeAdapter

    return TypeAdapter(type(report)).dump_python(report, mode="json")
