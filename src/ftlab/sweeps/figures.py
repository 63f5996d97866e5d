"""report.png: the main metric across the swept values (lines), or grouped bars for categorical
settings. Pyplot-free Figures, so they draw headless and leave a notebook's backend alone."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ftlab.sweeps import robustness
from ftlab.sweeps.context import sweep_id
from ftlab.sweeps.jobs import wanted
from ftlab.sweeps.markdown import show


def plot_sweep(summary: pd.DataFrame, metric: str | None = None, ax: Any = None) -> Any:
    """The metric across the swept values, seeds as error bars (± std); returns the Axes.

    One or two swept keys, the first numeric (an lr): it is the x axis (log scale when its
    values span 10x or more), and the second gives one line per value. The first categorical
    (strategies): grouped bars, :func:`plot_categories`, since a line between categories
    means nothing. More keys (an Optuna search): one point per row of the summary.
    Without ``ax`` a pyplot-free Figure is made, so this works headless (Agg) and leaves a
    notebook's backend alone.
    """
    metric = metric or summary.attrs["metric"]
    settings = summary.attrs["settings"]
    x_key = settings[0] if len(settings) in (1, 2) else None
    if x_key is not None and not pd.api.types.is_numeric_dtype(
        _numeric_if_possible(summary[x_key])
    ):
        return plot_categories(summary, metric, ax)
    if ax is None:
        ax = _axes(7, 4.5)
    if x_key is None:
        xs = pd.Series(range(len(summary)), summary.index, dtype=float)
    else:
        xs = _numeric_if_possible(summary[x_key])
    lines = [(None, summary)]
    if len(settings) == 2:
        lines = summary.groupby(settings[1], sort=False, dropna=False)
    for value, part in lines:
        part = part.assign(_x=xs[part.index]).sort_values("_x")
        ax.errorbar(
            part["_x"],
            part[f"{metric}_mean"],
            yerr=part[f"{metric}_std"].fillna(0),
            marker="o",
            capsize=4,
            label=None if value is None else f"{settings[1]}={show(value)}",
        )
    if x_key is not None and (xs > 0).all() and xs.max() / xs.min() >= 10:
        ax.set_xscale("log")
    if len(settings) == 2:
        ax.legend()
    ax.set_xlabel(x_key or "setting (row of report.csv)")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(sweep_id(summary.attrs["sweep_dir"]))
    ax.grid(alpha=0.3)
    return ax


def plot_categories(summary: pd.DataFrame, metric: str | None = None, ax: Any = None) -> Any:
    """Grouped bars, one group per setting (row of the summary): in-distribution accuracy
    (``test/acc``, else the main metric) next to each OOD set's, ± std over seeds; returns the
    Axes. A main metric that is not an accuracy (a loss) is drawn alone."""
    metric = metric or summary.attrs["metric"]
    settings = summary.attrs["settings"]
    bars = [metric]
    if metric.endswith("/acc"):
        in_dist = "test/acc" if _has_mean(summary, "test/acc") else metric
        ood = [
            n for n in summary.attrs["metrics"] if wanted(n, ["ood/*/acc"]) and n.count("/") == 2
        ]
        bars = [in_dist, *(n for n in ood if _has_mean(summary, n))]
    if ax is None:
        ax = _axes(max(7.0, 1.5 + 0.3 * len(summary) * len(bars)), 4.8)
    width = 0.8 / len(bars)
    for i, name in enumerate(bars):
        offsets = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(summary))]
        label = f"OOD {name.split('/')[1]}" if name.startswith("ood/") else f"ID {name}"
        ax.bar(
            offsets,
            summary[f"{name}_mean"].fillna(0),
            width,
            yerr=summary[f"{name}_std"].fillna(0),
            capsize=2,
            label=label,
        )
    names = [robustness.setting_label(row, settings) for row in summary.to_dict("records")]
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0, ha="right")
    ax.set_ylabel("mean ± std over seeds")
    ax.set_title(sweep_id(summary.attrs["sweep_dir"]))
    ax.grid(axis="y", alpha=0.3)
    if len(bars) > 1:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.12)  # headroom: the legend must not cover a bar
        ax.legend(fontsize=8, ncols=min(len(bars), 4), loc="upper right")
    return ax


def _axes(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # imported here: matplotlib costs ~0.5 s to import

    return Figure(figsize=(width, height), layout="constrained").subplots()


def _has_mean(summary: pd.DataFrame, metric: str) -> bool:
    return f"{metric}_mean" in summary and summary[f"{metric}_mean"].notna().any()


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column
