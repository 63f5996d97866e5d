"""report.md's sections: the settings table, the WiSE-FT curves and the provenance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ftlab.sweeps.jobs import SEED_KEY, wanted
from ftlab.sweeps.tables import best_setting


def to_markdown(
    summary: pd.DataFrame, jobs: pd.DataFrame, columns: Sequence[str] | None = None
) -> str:
    """report.md: counts, the settings table (mean ± std), the best setting, failures.

    ``columns``: the metrics to show (names or globs like ``ood/*/acc``; the main metric always
    comes first); default all of them.
    """
    metric, settings = summary.attrs["metric"], summary.attrs["settings"]
    jobs = jobs[~jobs["derived"]]
    counts = jobs["status"].value_counts()
    lines = [
        f"# Sweep report: {summary.attrs['sweep_dir']}",
        "",
        f"{len(jobs)} jobs: {counts.get('completed', 0)} completed, "
        f"{counts.get('failed', 0)} failed, "
        + (f"{counts['pruned']} pruned, " if counts.get("pruned") else "")
        + (f"{counts['interrupted']} interrupted, " if counts.get("interrupted") else "")
        + f"{counts.get('missing', 0)} missing. "
        f"Main metric: {metric} ({summary.attrs['mode']}), mean ± std over seeds.",
    ]
    if summary.attrs["fixed"]:
        fixed = " ".join(f"{k}={v}" for k, v in summary.attrs["fixed"].items())
        lines += ["", f"Every job: `{fixed}`"]
    names = [n[: -len("_mean")] for n in summary.columns if n.endswith("_mean")]
    if columns:  # in the order the patterns are given
        picked = [n for pattern in columns for n in names if n != metric and wanted(n, [pattern])]
        names = [metric, *dict.fromkeys(picked)]
    # "pruned" and "interrupted" (SIGTERM'd, resumable with resume=true) only when some job was.
    counted = [
        s
        for s in ("pruned", "failed", "interrupted", "missing")
        if counts.get(s) or s in ("failed", "missing")
    ]
    header = [*settings, "jobs", *counted, *names]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):  # records keep ints as ints
        cells = [show(row[k]) for k in settings]
        cells += [str(row[k]) for k in ("jobs", *counted)]
        cells += [mean_std(row[f"{n}_mean"], row[f"{n}_std"]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    best = best_setting(summary)
    if best is not None:
        where = " ".join(f"{k}={show(best[k])}" for k in settings) or "the only setting"
        score = mean_std(best[f"{metric}_mean"], best[f"{metric}_std"])
        lines += ["", f"Best: {where}: {metric} {score}"]
    notes = {
        "pruned": "",
        "failed": "",
        "interrupted": "",
        "missing": "no metrics.json or status.json",
    }
    for status, note in notes.items():
        bad = jobs[jobs["status"] == status]
        if not bad.empty:
            lines += ["", f"## {status.capitalize()} jobs", ""]
        for job in bad.to_dict("records"):
            setting = " ".join(f"{k}={show(job[k])}" for k in [*settings, SEED_KEY] if k in job)
            reason = (job["error"] or note).strip().splitlines() or [""]
            lines.append(f"- job {job['job']} ({setting}): {reason[-1][:300]}")
    return "\n".join(lines) + "\n"


def wise_ft_markdown(curves: pd.DataFrame, settings: Sequence[str]) -> str:
    """report.md's "WiSE-FT by α" section (empty without WiSE-FT jobs)."""
    if curves.empty:
        return ""
    names = [c[: -len("_mean")] for c in curves.columns if c.endswith("_mean")]
    header = [*settings, "α", *names]
    lines = ["", "## WiSE-FT by α", "", "θ(α) = (1−α)·θ₀ + α·θ, mean ± std over seeds.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in curves.to_dict("records"):
        cells = [show(row[k]) for k in settings] + [f"{row['alpha']:g}"]
        cells += [mean_std(row[f"{n}_mean"], row[f"{n}_std"]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def provenance_markdown(record: dict[str, Any]) -> str:
    """report.md's "Provenance" section."""
    machine = record["machine"]
    commit = (
        record["ftlab_commit"] or f"unknown (not a git checkout; ftlab {record['ftlab_version']})"
    )
    if record["uncommitted_changes"]:
        commit += " + uncommitted changes"
    sweep = record["sweep"]
    lines = [
        "",
        "## Provenance",
        "",
        f"- command: `{record['command']}`",
        f"- ftlab commit: {commit}",
        f"- date: {record['date']}",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"torch {machine['torch']}",
    ]
    if sweep["overrides"]:
        lines.append(f"- sweep overrides: `{' '.join(sweep['overrides'])}`")
    if sweep["metrics_written"]:
        first, last = sweep["metrics_written"]
        lines.append(f"- jobs' metrics.json written {first} to {last}")
    return "\n".join(lines) + "\n"


def mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def show(value: Any) -> str:
    """An override value for the report: as typed, or ``(default)`` where a job lacks it."""
    return (
        "(default)"
        if value is None or (isinstance(value, float) and pd.isna(value))
        else str(value)
    )
