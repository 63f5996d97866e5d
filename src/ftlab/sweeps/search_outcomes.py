"""A trial's outcome from its jobs' metrics.json: its values (mean ± std over seeds), or why it
was pruned or failed."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from ftlab.errors import FtlabError


@dataclass
class Outcome:
    """What a trial's jobs (one per seed) produced, as the study records it."""

    state: TrialState
    values: list[float] | None = None  # the objectives' means over seeds
    stds: list[float] | None = None  # their std over seeds (ddof=1); None with one seed
    per_job: list[list[float]] = field(default_factory=list)
    error: str = ""


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A job's metrics.json as ``{"val/acc": 0.9, "trainable_params": 12810.0, ...}``."""
    from ftlab.sweeps.jobs import flatten_metrics

    return flatten_metrics(dict(metrics))


def job_values(metrics: Mapping[str, Any], objectives: Sequence[str], job: str) -> list[float]:
    """The objectives' values in one job's metrics.json; the first is its optimized metric."""
    flat = flat_metrics(metrics)
    values = [float(metrics["optimized_metric"]["value"])]
    for name in objectives[1:]:
        if name not in flat:
            raise FtlabError(
                f"optimized_metric names {name}, which job {job} did not record: use one of "
                f"{', '.join(sorted(flat))}"
            )
        values.append(flat[name])
    return values


def trial_outcome(
    job_dirs: Sequence[Path], objectives: Sequence[str], errors: Sequence[str] = ()
) -> Outcome:
    """Failed if a job failed (``errors`` from the launcher, status.json or metrics.json),
    pruned if a job was pruned, complete with the mean over jobs when all completed, else
    interrupted (state FAIL, no error)."""
    per_job: list[list[float]] = []
    pruned = False
    for job_dir, error in zip(job_dirs, [*errors, *[""] * len(job_dirs)], strict=False):
        metrics = _read(job_dir / "metrics.json")
        status = metrics.get("status") if metrics else None
        error = error or _job_error(job_dir, metrics)
        if error:
            return Outcome(TrialState.FAIL, error=f"job {job_dir.name}: {error}")
        if status == "pruned":
            pruned = True
        elif status != "completed":
            return Outcome(TrialState.FAIL)  # interrupted or never finished: rerun
        else:
            values = job_values(metrics, objectives, job_dir.name)
            if not all(math.isfinite(v) for v in values):
                return Outcome(TrialState.FAIL, error=f"job {job_dir.name} returned {values}")
            per_job.append(values)
    if pruned:
        return Outcome(TrialState.PRUNED, per_job=per_job)
    means = [statistics.fmean(column) for column in zip(*per_job, strict=True)]
    stds = (
        [statistics.stdev(column) for column in zip(*per_job, strict=True)]
        if len(per_job) > 1
        else None
    )
    return Outcome(TrialState.COMPLETE, means, stds, per_job)


def _job_error(job_dir: Path, metrics: Mapping[str, Any] | None) -> str:
    if metrics is not None:
        return str(metrics.get("error", "")) if metrics.get("status") == "failed" else ""
    status = _read(job_dir / "status.json") or {}
    return str(status.get("error", "")) if status.get("status") == "failed" else ""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
