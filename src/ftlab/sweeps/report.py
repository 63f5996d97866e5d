"""The sweep report: what a multirun produced, one row per setting, mean ± std over seeds.

``ftlab-report outputs/multirun/2024-05-01/12-30-00`` writes ``report.csv``, ``report.md``,
``report.png`` and ``provenance.json`` (the command, ftlab's commit, the date and the machine)
into the sweep directory, and for a sweep with OOD sets ``effective_robustness.png`` and
``.csv`` (:mod:`ftlab.sweeps.robustness`). Notebooks get the same tables from
:func:`load_sweep` (one row per job) and :func:`summarize` (one row per setting), and the
figure from :func:`plot_sweep`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ftlab.errors import FtlabError
from ftlab.sweeps import robustness
from ftlab.sweeps.context import is_bookkeeping, parse_override, sweep_id

SEED_KEY = "seed"  # the override that replicates a setting; every other override defines one
# sections whose numbers are metrics (forgetting: source_acc, adapted_acc, drop; init_from runs)
STAGES = ("train", "val", "test", "ood", "wise_ft", "forgetting")
WISE_FT_KEY = "wise_ft"  # the setting column of --wise-ft rows
WISE_FT_PREFIX = "wise_ft/best/"  # a job's metrics at its best-by-val WiSE-FT α
KEPT_BY_WISE_FT = ("wall_time_s", "trainable_params", "total_params")  # the run's own cost
NOT_METRICS = {"seed", "world_size"}  # top-level numbers that describe a job, not its result
JOB_MARKERS = (".hydra", "metrics.json", "status.json")
DEFAULT_METRIC, DEFAULT_MODE = "val/acc", "max"
REPORT_FILES = ("report.csv", "report.md", "report.png", "provenance.json")
PROVENANCE_FILE = "provenance.json"
# A job's status: metrics.json's (completed, pruned: stopped early by an Optuna pruner, failed:
# diverged, interrupted: SIGTERM, resumable), status.json's (failed: an error), or missing
# (neither file). Only completed jobs enter the means: a pruned job's numbers stop mid-training.
STATUSES = ("completed", "pruned", "failed", "interrupted", "missing")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep: children holding ``.hydra/``, metrics.json or status.json."""
    found = [
        child
        for child in sweep_dir.iterdir()
        if child.is_dir()
        and not child.name.startswith(".")  # .submitit/ and friends
        and any((child / marker).exists() for marker in JOB_MARKERS)
    ]
    # Numbered job dirs in numeric order (2 before 10), anything else after them.
    return sorted(found, key=lambda d: (not d.name.isdigit(), d.name.zfill(12)))


def flatten_metrics(metrics: dict[str, Any], top: bool = True) -> dict[str, float]:
    """``{"val": {"acc": 0.9}, "wall_time_s": 3.1}`` -> ``{"val/acc": 0.9, "wall_time_s": 3.1}``.

    The numbers of the evaluation sections (nested ones too: ``ood/<set>/acc``) and the
    top-level numbers; other sections (phases, drift, ...) are diagnostics, not sweep metrics.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and (key in STAGES or not top):
            flat.update({f"{key}/{k}": v for k, v in flatten_metrics(value, top=False).items()})
        elif _is_number(value) and not (top and key in NOT_METRICS):
            flat[key] = float(value)
    return flat


def read_job(job_dir: Path) -> dict[str, Any]:
    """One job: ``{job, status, error, overrides: {key: value}, metrics: {name: number}}``.

    status is ``completed`` (metrics.json), ``failed`` (status.json) or ``missing`` (neither:
    still running, or killed before it could write either).
    """
    status = _read_json(job_dir / "status.json") or {}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if overrides_file.exists():
        overrides = yaml.safe_load(overrides_file.read_text()) or []
    else:
        overrides = status.get("overrides", [])
    job: dict[str, Any] = {
        "job": job_dir.name,
        "status": "missing",
        "error": "",
        # The sweeper's link to the Optuna trial (pruning) is bookkeeping, not a setting.
        "overrides": dict(p for o in overrides if not is_bookkeeping((p := parse_override(o))[0])),
        "metrics": {},
    }
    metrics = _read_json(job_dir / "metrics.json")
    # metrics.json is the job's last act, so it wins over a status.json left by an earlier
    # attempt of the same job dir (a requeued SLURM job).
    if metrics is not None:
        job["status"] = metrics.get("status", "completed")
        job["error"] = metrics.get("error", "")
        job["metrics"] = flatten_metrics(metrics)
        if isinstance(pruned := metrics.get("pruned"), dict):
            job["error"] = f"pruned after epoch {pruned.get('epoch')} at {pruned.get('value')}"
    elif status:
        job["status"] = status.get("status", "failed")
        job["error"] = status.get("error", "")
    return job


def load_sweep(sweep_dir: str | Path, wise_ft: bool = False) -> pd.DataFrame:
    """One row per job: ``job``, ``status``, ``error``, one column per override, one per metric.

    ``wise_ft=True`` adds a row for every job that ran WiSE-FT: its metrics at the best α by val
    accuracy under the run's own names (``test/acc``, ``ood/<set>/acc``), told apart by the
    setting column ``wise_ft`` ("best α" there, "" elsewhere) and ``derived=True``.

    Metrics are named like ``val/acc``; a job lacking a metric others have gets NaN. Override
    columns hold the values as typed (strings; None where a job lacks the override).
    ``.attrs`` records ``overrides`` and ``metrics`` (the column names), ``sweep_dir``, and the
    sweep's ``metric``/``mode`` (its ``optimized_metric``/``optimized_mode``) for
    :func:`summarize`.
    """
    path = Path(sweep_dir)
    jobs = [read_job(d) for d in _job_dirs_or_error(path)]
    if wise_ft:
        jobs += [derived for job in jobs if (derived := _wise_ft_job(job))]
        for job in jobs:
            job["overrides"].setdefault(WISE_FT_KEY, "")
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    names = list(dict.fromkeys(m for job in jobs for m in job["metrics"]))
    frame = pd.DataFrame(
        [
            {
                "job": job["job"],
                "status": job["status"],
                "error": job["error"],
                "derived": job.get("derived", False),
                **{k: job["overrides"].get(k) for k in keys},
                **job["metrics"],
            }
            for job in jobs
        ],
        columns=["job", "status", "error", "derived", *keys, *names],
    )
    frame.attrs.update(sweep_dir=str(path), overrides=keys, metrics=names, **_sweep_target(path))
    return frame


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
        picked = [n for pattern in columns for n in names if n != metric and _wanted(n, [pattern])]
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
        cells = [_show(row[k]) for k in settings]
        cells += [str(row[k]) for k in ("jobs", *counted)]
        cells += [_mean_std(row[f"{n}_mean"], row[f"{n}_std"]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    best = best_setting(summary)
    if best is not None:
        where = " ".join(f"{k}={_show(best[k])}" for k in settings) or "the only setting"
        score = _mean_std(best[f"{metric}_mean"], best[f"{metric}_std"])
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
            setting = " ".join(f"{k}={_show(job[k])}" for k in [*settings, SEED_KEY] if k in job)
            reason = (job["error"] or note).strip().splitlines() or [""]
            lines.append(f"- job {job['job']} ({setting}): {reason[-1][:300]}")
    return "\n".join(lines) + "\n"


def wise_ft_curves(sweep_dir: str | Path, settings: Sequence[str]) -> pd.DataFrame:
    """Every job's ``wise_ft.csv`` averaged over seeds: one row per (setting, α), with
    ``<column>_mean`` and ``<column>_std`` for each of its metrics (``val_acc``, ``ood_<set>_acc``).
    """
    tables = []
    for job_dir in _job_dirs_or_error(Path(sweep_dir)):
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


def wise_ft_markdown(curves: pd.DataFrame, settings: Sequence[str]) -> str:
    """report.md's "WiSE-FT by α" section (empty without WiSE-FT jobs)."""
    if curves.empty:
        return ""
    names = [c[: -len("_mean")] for c in curves.columns if c.endswith("_mean")]
    header = [*settings, "α", *names]
    lines = ["", "## WiSE-FT by α", "", "θ(α) = (1−α)·θ₀ + α·θ, mean ± std over seeds.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in curves.to_dict("records"):
        cells = [_show(row[k]) for k in settings] + [f"{row['alpha']:g}"]
        cells += [_mean_std(row[f"{n}_mean"], row[f"{n}_std"]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
            label=None if value is None else f"{settings[1]}={_show(value)}",
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
            n for n in summary.attrs["metrics"] if _wanted(n, ["ood/*/acc"]) and n.count("/") == 2
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


def provenance(sweep_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """What a committed report must say about itself: the command that wrote it, ftlab's
    commit (and whether the working tree had uncommitted changes), the date and the machine;
    the sweep's own multirun overrides and when its jobs wrote their metrics.

    The machine is the one that wrote the report: metrics.json does not record the jobs' own.
    """
    source = Path(__file__).resolve().parent
    commit = git(source, "rev-parse", "HEAD")
    dirty = git(source, "status", "--porcelain", "--untracked-files=no")
    path = Path(sweep_dir)
    written = sorted(p.stat().st_mtime for p in path.glob("*/metrics.json"))
    config_file = path / "multirun.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    overrides = ((config or {}).get("hydra") or {}).get("overrides", {}).get("task")
    return {
        "command": command or "ftlab.sweeps.report.write_report(...)  # a library call",
        "ftlab_commit": commit,
        "uncommitted_changes": None if dirty is None else bool(dirty),
        "ftlab_version": _version("ftlab"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": _version("torch"),  # from metadata: importing torch costs seconds
            "platform": platform.platform(),
        },
        "sweep": {
            "dir": str(path),
            "overrides": overrides,
            "metrics_written": [_date(written[0]), _date(written[-1])] if written else None,
        },
    }


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


def write_report(
    sweep_dir: str | Path,
    metric: str | None = None,
    mode: str | None = None,
    columns: Sequence[str] | None = None,
    wise_ft: bool = False,
    out: str | Path | None = None,
    command: str | None = None,
) -> pd.DataFrame:
    """Write report.csv, report.md, report.png and provenance.json into ``out`` (default: the
    sweep directory), and the effective-robustness plot when the sweep has OOD sets; returns
    the summary, whose ``.attrs["files"]`` names the files written.

    ``columns`` picks report.md's metrics (report.csv keeps all); ``wise_ft`` adds the WiSE-FT
    rows of :func:`load_sweep`; ``command`` is recorded in provenance.json (``ftlab-report``
    passes its own command line).
    """
    jobs = load_sweep(sweep_dir, wise_ft=wise_ft)
    summary = summarize(jobs, metric, mode)
    path = Path(out or sweep_dir)
    path.mkdir(parents=True, exist_ok=True)
    summary.to_csv(path / "report.csv", index=False)
    markdown = to_markdown(summary, jobs, columns)
    if wise_ft:
        settings = [k for k in summary.attrs["settings"] if k != WISE_FT_KEY]
        markdown += wise_ft_markdown(wise_ft_curves(sweep_dir, settings), settings)
    robust = robustness.write_effective_robustness(summary, sweep_dir, path)
    markdown += robustness.markdown(robust)
    record = provenance(sweep_dir, command)
    markdown += provenance_markdown(record)
    (path / "report.md").write_text(markdown)
    (path / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    plot_sweep(summary).figure.savefig(path / "report.png", dpi=120)
    summary.attrs["files"] = [*REPORT_FILES, *(robust.files if robust else [])]
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlab-report <sweep_dir> [--metric val/acc] [--mode max]``."""
    parser = argparse.ArgumentParser(prog="ftlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory: outputs/multirun/<date>/<time>")
    parser.add_argument("--metric", help="main metric, e.g. val/acc (default: optimized_metric)")
    parser.add_argument("--mode", choices=("max", "min"), help="default: optimized_mode")
    parser.add_argument(
        "--columns",
        help="comma-separated metrics for report.md, globs allowed: 'test/acc,ood/*/acc'",
    )
    parser.add_argument(
        "--wise-ft",
        action="store_true",
        help="add a row per setting that ran WiSE-FT: its metrics at the best α by val",
    )
    parser.add_argument(
        "--out", help="folder for the report files (default: the sweep directory), e.g. to commit"
    )
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    command = shlex.join(["ftlab-report", *(sys.argv[1:] if argv is None else argv)])
    try:
        summary = write_report(
            args.sweep_dir, args.metric, args.mode, columns, args.wise_ft, args.out, command
        )
    except FtlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = Path(args.out or args.sweep_dir)
    print((path / "report.md").read_text(), end="")
    print("wrote " + ", ".join(str(path / name) for name in summary.attrs["files"]))
    return 0


def _wise_ft_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """A completed job's WiSE-FT row (its metrics at the best α), or None without WiSE-FT."""
    best = {
        name[len(WISE_FT_PREFIX) :]: value
        for name, value in job["metrics"].items()
        if name.startswith(WISE_FT_PREFIX)
    }
    if job["status"] != "completed" or not best:
        return None
    kept = {k: job["metrics"][k] for k in KEPT_BY_WISE_FT if k in job["metrics"]}
    return {
        **job,
        "job": f"{job['job']}+{WISE_FT_KEY}",
        "derived": True,
        "overrides": {**job["overrides"], WISE_FT_KEY: "best α"},
        "metrics": {**kept, **best},
    }


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _job_dirs_or_error(path: Path) -> list[Path]:
    if not path.is_dir():
        raise FtlabError(f"{path}: no such sweep directory")
    found = job_dirs(path)
    if found:
        return found
    if any((path / marker).exists() for marker in JOB_MARKERS):
        raise FtlabError(
            f"{path} is a single run's directory, not a sweep: pass the multirun directory "
            "that holds the numbered job directories (outputs/multirun/<date>/<time>)"
        )
    raise FtlabError(
        f"{path} is not a sweep directory: no job directory in it has .hydra/, metrics.json "
        "or status.json (sweeps live in outputs/multirun/<date>/<time>)"
    )


def _sweep_target(path: Path) -> dict[str, str]:
    """The sweep's optimized_metric/optimized_mode, from the multirun.yaml Hydra saved."""
    config_file = path / "multirun.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    return {
        "metric": config.get("optimized_metric") or DEFAULT_METRIC,
        "mode": config.get("optimized_mode") or DEFAULT_MODE,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return {"status": "failed", "error": f"unreadable {path.name}: {exc}"}


def _mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def _show(value: Any) -> str:
    """An override value for the report: as typed, or ``(default)`` where a job lacks it."""
    return (
        "(default)"
        if value is None or (isinstance(value, float) and pd.isna(value))
        else str(value)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _axes(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # imported here: matplotlib costs ~0.5 s to import

    return Figure(figsize=(width, height), layout="constrained").subplots()


def _has_mean(summary: pd.DataFrame, metric: str) -> bool:
    return f"{metric}_mean" in summary and summary[f"{metric}_mean"].notna().any()


def git(where: Path, *args: str) -> str | None:
    """``git <args>`` run in ``where``; None outside a git checkout or without git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo); platform.processor() is empty on most Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column


if __name__ == "__main__":
    sys.exit(main())
