"""The trials' bookkeeping among many worker processes: who runs a trial, how many are taken,
surplus trials given back, heartbeats, outcomes told to the study, the trials of dead workers
recovered or queued again, and what a finished search leaves (optimization_results.yaml)."""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from ftlab.sweeps.search_outcomes import Outcome, trial_outcome
from ftlab.sweeps.search_storage import MAX_RETRIES, shown_url

log = logging.getLogger("ftlab")


RESULTS_FILE = "optimization_results.yaml"


def worker_id() -> str:
    """This sweeper process: ``host:pid``, recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _counts(trial: FrozenTrial) -> bool:
    """Counted by ``n_trials``: complete, pruned, or failed by its job (not by an interruption
    or as surplus)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )


def finished(study: optuna.Study) -> int:
    """Finished trials, the ones ``n_trials`` counts: complete, pruned, or failed by their job."""
    return sum(_counts(t) for t in study.get_trials(deepcopy=False))


def taken(study: optuna.Study) -> int:
    """Finished trials plus the ones some worker is running now."""
    return sum(
        _counts(t) or t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)
    )


def surplus(study: optuna.Study, trial: Trial, n_trials: int) -> bool:
    """Whether racing workers asked more trials than ``n_trials`` leaves room for, this one
    among the extra: trial numbers are unique and increasing, so every worker agrees on which."""
    before = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number <= trial.number and (_counts(t) or t.state == TrialState.RUNNING)
    ]
    return len(before) > n_trials


def give_back(study: optuna.Study, trial: Trial) -> None:
    """A surplus trial: failed as ``surplus`` (uncounted); a queued setting it took is requeued."""
    frozen = study._storage.get_trial(trial._trial_id)
    trial.set_user_attr("surplus", "n_trials was reached by other workers; not run")
    study.tell(trial, state=TrialState.FAIL)
    if {"fixed_params", "failed_trial"} & set(frozen.system_attrs):  # enqueued, or a retry
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=frozen.params,
                distributions=frozen.distributions,
                system_attrs=frozen.system_attrs,
            )
        )


def job_names(number: int, seeds: Sequence[int]) -> list[str]:
    """A trial's job directories in the sweep dir: ``<trial>``, or ``<trial>-seed<s>`` per seed."""
    return [f"{number}-seed{s}" for s in seeds] if seeds else [str(number)]


@contextmanager
def heartbeats(study: optuna.Study, trials: Sequence[Trial]) -> Iterator[None]:
    """Record each trial's heartbeat while its jobs run (no-op without ``heartbeat_s``)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with ExitStack() as stack:
        for trial in trials:
            stack.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        yield


def recover(
    study: optuna.Study, sweep_dir: Path, objectives: Sequence[str], grace_s: float = 180
) -> int:
    """Fail and queue again the running trials of dead workers; returns how many.

    Here: a trial whose worker ran on this host under a pid that is gone. Elsewhere: Optuna's
    heartbeat (``fail_stale_trials``). A trial naming no worker, older than ``grace_s``: a
    worker records itself right after asking, so a younger one may be a live worker's. A trial
    whose jobs had all finished before their worker died is recorded with their values instead:
    the kill came between the jobs' last write and the study's.
    """
    optuna.storages.fail_stale_trials(study)
    cut_off = 0
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            started = trial.datetime_start or now
            if (now - started).total_seconds() < grace_s:
                continue
        elif not _dead_here(worker):
            continue
        names = trial.user_attrs.get("job_names") or [str(trial.number)]
        outcome = trial_outcome([sweep_dir / n for n in names], objectives)
        handle = Trial(study, trial._trial_id)  # a FrozenTrial has no set_user_attr
        if outcome.state == TrialState.COMPLETE:
            record(study, handle, outcome, [sweep_dir / n for n in names])
            log.info("trial %d had finished before its worker died: kept", trial.number)
            continue
        requeue(study, handle)
        cut_off += 1
    return cut_off


def requeue(study: optuna.Study, trial: Trial | FrozenTrial) -> None:
    """A trial cut off by its worker's death, Ctrl-C or a launcher error: failed without an
    ``error`` (so uncounted) and its parameters queued again, as Optuna's heartbeat does."""
    if study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True).state == (
        TrialState.FAIL
    ):
        retry = RetryHeartbeatStaleTrialCallback(MAX_RETRIES)
        retry(study, study._storage.get_trial(trial._trial_id))


def interrupt(study: optuna.Study, trials: Sequence[Trial]) -> None:
    """Trials cut off in this worker (Ctrl-C, a launcher error): requeued."""
    for trial in trials:
        requeue(study, trial)


def _dead_here(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's worker: its heartbeat says whether it lives
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def record(study: optuna.Study, trial: Trial, outcome: Outcome, job_dirs: Sequence[Path]) -> None:
    """Tell the study a trial's outcome, with its job directories and per-seed values."""
    trial.set_user_attr("job_dirs", [str(d) for d in job_dirs])
    trial.set_user_attr("job_dir", str(job_dirs[0]))
    if outcome.per_job:
        trial.set_user_attr("values_per_job", outcome.per_job)
    if outcome.stds is not None:
        trial.set_user_attr("std", outcome.stds)
    if outcome.error:
        trial.set_user_attr("error", outcome.error[-2000:])
        log.warning("trial %d failed: %s", trial.number, outcome.error.splitlines()[-1])
    if outcome.state == TrialState.COMPLETE:
        values = outcome.values or []
        study.tell(trial, values if len(values) > 1 else values[0], skip_if_finished=True)
    elif outcome.state == TrialState.PRUNED:
        # Optuna records the last value the job reported as the pruned trial's value.
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        log.info("trial %d pruned", trial.number)
    elif outcome.error:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    else:
        requeue(study, trial)  # a job was interrupted (SIGTERM) or never finished


def write_results(
    study: optuna.Study, path: Path, n_trials: int, storage: str, objectives: Sequence[str]
) -> None:
    """optimization_results.yaml: the best trial (or the Pareto front), and where the study is."""
    results: dict[str, Any] = {
        "study_name": study.study_name,
        "storage": shown_url(storage),
        "directions": [d.name.lower() for d in study.directions],
        "objectives": list(objectives),
        "n_trials": n_trials,
        "finished": finished(study),
        "states": {
            s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        },
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete and len(study.directions) == 1:
        best = study.best_trial
        results.update(
            best_trial=best.number,
            best_value=best.value,
            best_std=(best.user_attrs.get("std") or [None])[0],
            best_params=best.params,
            best_job_dir=best.user_attrs.get("job_dir"),
        )
        log.info("best trial %d: value %s with %s", best.number, best.value, best.params)
    elif complete:
        results["pareto_front"] = [
            {"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials
        ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # two workers may write it at once
    tmp.write_text(yaml.safe_dump(results, sort_keys=False))
    os.replace(tmp, path)
