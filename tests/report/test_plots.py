"""Figures from real sweeps: one colour per arm, shaded by beta; the beta plot only when beta varies."""

from __future__ import annotations

import pytest

from tbrm.report.analysis import group_arms
from tbrm.report.plots import beta_sweep, colours, cost, efficiency, learning_curves
from tbrm.report.runs import load_sweep

pytestmark = pytest.mark.slow


def test_figures_of_the_kl_ablation(kl_sweep):
    arms = group_arms(load_sweep(kl_sweep))
    col = colours(arms)
    assert len(set(col.values())) == 4
    fig = learning_curves(arms)
    assert [ax.get_title() for ax in fig.axes][:1] == ["val/accuracy (greedy)"]
    assert len(fig.axes[0].lines) == 4  # one mean line per arm
    fig = beta_sweep(arms)
    assert [len(ax.containers) for ax in fig.axes] == [2, 2, 2]  # tbrm n=1 and grpo n=4, each with error bars
    assert fig.axes[0].get_xscale() == "symlog"  # beta = 0 is on the axis
    assert len(efficiency(arms).axes[1].lines) == 4
    assert [t.get_text() for t in cost(arms).axes[0].get_yticklabels()][0] == "tbrm n=1 β=0.05"


def test_no_beta_plot_when_no_algorithm_has_two_betas(failed_sweep):
    sweep, _ = failed_sweep
    assert beta_sweep(group_arms(load_sweep(sweep))) is None
