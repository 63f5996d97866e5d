"""A sweep's jobs as ``ftlab-report`` reads them: the job directories, each job's status,
overrides and flat metrics (:func:`read_job`), and the table of one row per job
(:func:`load_sweep`)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ftlab.errors import FtlabError
from ftlab.sweeps.context import is_bookkeeping, parse_override

SEED_KEY = "seed"  # the override that replicates a setting; every other override defines one


# sections whose numbers are metrics (forgetting: source_acc, adapted_acc, drop; init_from runs)
STAGES = ("train", "val", "test", "ood", "wise_ft", "forgetting")


WISE_FT_KEY = "wise_ft"  # the setting column of --wise-ft rows


WISE_FT_PREFIX = "wise_ft/best/"  # a job's metrics at its best-by-val WiSE-FT α


KEPT_BY_WISE_FT = ("wall_time_s", "trainable_params", "total_params")  # the run's own cost


NOT_METRICS = {"seed", "world_size"}  # top-level numbers that describe a job, not its result


JOB_MARKERS = (".hydra", "metrics.json", "status.json")


DEFAULT_METRIC, DEFAULT_MODE = "val/acc", "max"


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
    jobs = [read_job(d) for d in sweep_job_dirs(path)]
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


def wanted(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def sweep_job_dirs(path: Path) -> list[Path]:
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
