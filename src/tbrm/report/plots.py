"""The report's figures (matplotlib, PNG), each a function of the arms that returns its Figure.

- ``learning_curves``: greedy validation accuracy, training reward and KL to the reference
  against the RL step, mean over seeds with a 95% band;
- ``beta_sweep``: final accuracy and KL against beta, one line per algorithm (with n);
- ``efficiency``: validation accuracy against completions generated and against training time;
- ``cost``: seconds per step and peak memory per arm.

Colours: one hue per algorithm family; within a family, darker for larger beta.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from tbrm.report.analysis import Arm, arm_table, band, train_band, val_curve

CMAPS = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]


def colours(arms: list[Arm]) -> dict[str, tuple]:
    """``label -> colour``: one colour map per family, shaded by beta within it."""
    families = list(dict.fromkeys(a.family for a in arms))
    out = {}
    for i, family in enumerate(families):
        members = sorted((a for a in arms if a.family == family), key=lambda a: (a.beta is None, a.beta or 0))
        cmap = plt.get_cmap(CMAPS[i % len(CMAPS)])
        for j, arm in enumerate(members):
            out[arm.label] = cmap(0.85 if len(members) == 1 else 0.4 + 0.55 * j / (len(members) - 1))
    return out


def _plot_band(ax, frame, x: str, colour, label: str) -> None:
    if frame.empty:
        return
    ax.plot(frame[x], frame["mean"], color=colour, label=label, lw=1.6)
    ax.fill_between(frame[x], frame["lo"], frame["hi"], color=colour, alpha=0.2, lw=0)


def learning_curves(arms: list[Arm]):
    """Greedy validation accuracy, training reward and KL to the reference per RL step."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    col = colours(arms)
    for arm in arms:
        if not arm.completed:
            continue
        _plot_band(
            axes[0],
            band([val_curve(j) for j in arm.completed], "steps", "val/accuracy"),
            "steps",
            col[arm.label],
            arm.label,
        )
        _plot_band(axes[1], train_band(arm, "train/reward_mean"), "step", col[arm.label], arm.label)
        _plot_band(axes[2], train_band(arm, "train/kl_ref"), "step", col[arm.label], arm.label)
    titles = ["val/accuracy (greedy)", "train/reward_mean (5-step mean)", "train/kl_ref (nats, 5-step mean)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    return fig


def _legend(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(labels) / 6), 1, 1))
    else:
        fig.tight_layout()


def beta_sweep(arms: list[Arm]):
    """Final greedy accuracy, sampled accuracy and KL to the reference against beta, one line per
    algorithm family (error bars: 95% intervals over seeds); None when no family has two betas."""
    table = arm_table(arms)
    table = table[table["beta"].notna() & (table["seeds"] > 0)]
    families = [f for f, rows in table.groupby("family", sort=False) if rows["beta"].nunique() > 1]
    if not families:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    hues = {f: plt.get_cmap(CMAPS[i % len(CMAPS)])(0.8) for i, f in enumerate(dict.fromkeys(table["family"]))}
    for family in families:
        rows = table[table["family"] == family].sort_values("beta")
        for ax, key in zip(axes, ("val/accuracy", "val/accuracy_sampled", "train/kl_ref"), strict=True):
            err = rows[f"{key} ±"].fillna(0).to_numpy()
            ax.errorbar(rows["beta"], rows[key], yerr=err, marker="o", capsize=3, color=hues[family], label=family)
    betas = table["beta"].to_numpy()
    positive = betas[betas > 0]
    for ax, title in zip(axes, ("final val/accuracy", "final val/accuracy_sampled", "final train/kl_ref"), strict=True):
        if len(positive):
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_xlabel("beta (KL coefficient)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    return fig


def efficiency(arms: list[Arm]):
    """Greedy validation accuracy against completions generated and against training seconds."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    col = colours(arms)
    for arm in arms:
        curves = [val_curve(j) for j in arm.completed]
        for ax, x in zip(axes, ("samples", "elapsed_s"), strict=True):
            mean_x = band(curves, "steps", x)  # seeds of one arm validate at the same steps
            acc = band(curves, "steps", "val/accuracy")
            if mean_x.empty or acc.empty:
                continue
            merged = acc.assign(x=mean_x["mean"].to_numpy())
            _plot_band(ax, merged.rename(columns={"x": x}), x, col[arm.label], arm.label)
    for ax, title in zip(axes, ("completions generated", "training time (s, validation excluded)"), strict=True):
        ax.set_xlabel(title)
        ax.set_ylabel("val/accuracy (greedy)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy at equal samples")
    axes[1].set_title("accuracy at equal time")
    _legend(fig, axes[0])
    return fig


def cost(arms: list[Arm]):
    """Median seconds per RL step and peak memory per arm (error bars: 95% intervals)."""
    table = arm_table(arms)
    table = table[table["seeds"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 + 0.35 * max(len(table), 3)))
    col = colours(arms)
    y = np.arange(len(table))
    for ax, key, title in zip(
        axes, ("perf/step_s", "perf/peak_mem_gb"), ("seconds per RL step", "peak memory (GB)"), strict=True
    ):
        ax.barh(y, table[key], xerr=table[f"{key} ±"].fillna(0), color=[col[a] for a in table["arm"]], capsize=3)
        ax.set_yticks(y, table["arm"], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


FIGURES = {
    "learning_curves": learning_curves,
    "beta_sweep": beta_sweep,
    "efficiency": efficiency,
    "cost": cost,
}
