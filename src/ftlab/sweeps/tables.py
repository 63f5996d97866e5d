"""The sweep's tables from :func:`~ftlab.sweeps.jobs.load_sweep`: one row per setting (mean
± std over seeds, :func:`summarize`), the best setting, and the WiSE-FT curves by α."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ftlab.errors import FtlabError
from ftlab.sweeps.jobs import (
    DEFAULT_METRIC,
    DEFAULT_MODE,
    SEED_KEY,
    STATUSES,
    read_job,
    sweep_job_dirs,
)


def summarize(
    jobs: pd.DataFrame, metric: str | None = None, mode: str | None = None
) -> pd.DataFrame:
    """One row per setting (the overrides that vary, minus ``seed``): job counts and, for every
    metric, ``<metric>_mean`` and ``<metric>_std`` over the setting's completed jobs.

    ``metric`` (default: the sweep's optimized metric) comes first; ``mode`` (max|min) says
    which setting is best. ``.attrs`` records ``settings`` (the setting columns), ``metric``,
    ``mode`` and ``fixed`` (the overrides every job shares).
    """
    metric = metric or jobs.attrs.get("metric", DEFAULT_METRIC)
    names = jobs.attrs["metrics"]
    if metric not in names and (jobs["status"] == "completed").any():
        raise FtlabError(
            f"metric={metric} is in none of the sweep's metrics.json files: "
            f"use one of {', '.join(names)}"
        )
    if mode is None and metric == jobs.attrs.get("metric"):
        mode = jobs.attrs.get("mode", DEFAULT_MODE)
    elif mode is None:
        mode = "min" if "loss" in metric else "max"
    keys = [k for k in jobs.attrs["overrides"] if k != SEED_KEY]
    settings = [k for k in keys if jobs[k].nunique(dropna=False) > 1]
    fixed = {k: jobs[k].iloc[0] for k in keys if k not in settings}
    groups = jobs.groupby(settings, sort=False, dropna=False) if settings else [((), jobs)]

    rows = []
    for values, group in groups:
        done = group[group["status"] == "completed"]
        row: dict[str, Any] = dict(zip(settings, values, strict=True))
        row["jobs"] = len(group)
        for status in STATUSES:
            row[status] = int((group["status"] == status).sum())
        if SEED_KEY in group:
            row["seeds"] = " ".join(str(s) for s in group[SEED_KEY].dropna())
        for name in [metric, *(n for n in names if n != metric)]:
            column = done[name] if name in done else pd.Series(dtype=float)
            row[f"{name}_mean"] = column.mean()
            row[f"{name}_std"] = column.std()  # over seeds (ddof=1); NaN for a single seed
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary.attrs.update(jobs.attrs, settings=settings, metric=metric, mode=mode, fixed=fixed)
    return summary


def best_setting(summary: pd.DataFrame) -> pd.Series | None:
    """The row with the best mean of the main metric, or None when no setting completed."""
    means = summary[f"{summary.attrs['metric']}_mean"].dropna()
    if means.empty:
        return None
    return summary.loc[means.idxmax() if summary.attrs["mode"] == "max" else means.idxmin()]


def wise_ft_curves(sweep_dir: str | Path, settings: Sequence[str]) -> pd.DataFrame:
    """Every job's ``wise_ft.csv`` averaged over seeds: one row per (setting, α), with
    ``<column>_mean`` and ``<column>_std`` for each of its metrics (``val_acc``, ``ood_<set>_acc``).
    """
    tables = []
    for job_dir in sweep_job_dirs(Path(sweep_dir)):
        if (job_dir / "wise_ft.csv").is_file():
            table = pd.read_csv(job_dir / "wise_ft.csv")
            overrides = read_job(job_dir)["overrides"]
            tables.append(table.assign(**{k: overrides.get(k) for k in settings}))
    if not tables:
        return pd.DataFrame()
    curves = pd.concat(tables, ignore_index=True)
    grouped = curves.groupby([*settings, "alpha"], sort=True, dropna=False)
    return grouped.agg(["mean", "std"]).pipe(
        lambda t: t.set_axis([f"{a}_{b}" for a, b in t.columns], axis=1).reset_index()
    )
