"""Optuna search behind ``hparams_search=optuna``: search space, shared study, trial results.

The Hydra half (asking, launching jobs, telling) is ``hydra_plugins.ftlab_sweeper``; this module
holds everything that touches Optuna, on its current API (ask/tell).

Resume and many workers: the study lives in an RDB storage, SQLite inside the sweep directory
by default, any Optuna RDB URL (PostgreSQL on a cluster) otherwise. ``n_trials`` is the study's
*total* of finished trials (complete, pruned, or failed by its job), shared by every worker
process that runs the same command: each one asks a trial only while finished + running trials
leave room, and gives back a trial that a racing worker made surplus. A trial whose worker died
(a killed process, a lost node) is failed without an ``error`` attribute, does not count, and its
parameters are queued again (Optuna's :class:`RetryHeartbeatStaleTrialCallback`), unless its
jobs had all written a completed ``metrics.json``: then their values are kept. A worker on the
same host sees a dead worker at once (its pid is gone); one on another host after the dead
worker's heartbeat is ``3 × heartbeat_s`` old.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import math
import os
import socket
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from ftlab.errors import FtlabError

log = logging.getLogger("ftlab")

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
RESULTS_FILE = "optimization_results.yaml"


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its ``Study.stop()`` once every point ran: that works only inside
    ``Study.optimize``; under ask/tell, ``n_trials`` ends the search."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        pass


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
    "grid": GridSampler,
}
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
# A dead worker's trial is queued again at most this often: a setting that kills its worker
# every time (out of memory, say) must not loop forever.
MAX_RETRIES = 2
SCHEMA_RACE_RETRIES = 5
SEED_KEY = "seed"

# Heartbeats and the retry callback are "experimental" in Optuna; their warnings say nothing a
# user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class SearchSpace:
    """Optuna distributions per override key, plus the overrides every trial gets unchanged."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    # The override key as typed ("+x", "++x") and, for choices, each value's text as typed.
    keys: dict[str, str] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then its sampled values."""
        chosen = []
        for name, dist in self.distributions.items():
            value = params[name]
            if isinstance(dist, CategoricalDistribution):
                value = self.texts[name][dist.to_internal_repr(value)]
            chosen.append(f"{self.keys[name]}={value}")
        return [*self.fixed, *chosen]

    def fixed_keys(self) -> dict[str, str]:
        """``{key: override}`` of the fixed overrides."""
        parsed = OverridesParser.create().parse_overrides(self.fixed)
        return {o.key_or_group: o.input_line for o in parsed}


def search_space(params: Mapping[str, str], arguments: Sequence[str]) -> SearchSpace:
    """The space from the config's ``params`` (key: sweep expression) and the command line.

    Expressions use Hydra's override grammar: ``choice(a,b)``, ``range(1,5)``,
    ``interval(0.0,0.5)``, ``tag(log, interval(1e-5,1e-2))``, ``tag(int, interval(8,64))``.
    A command-line argument replaces a ``params`` entry of the same key; a plain value fixes it.
    """
    texts = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    by_key: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(texts):
        by_key.pop(override.key_or_group, None)  # the later (command line) wins, in its place
        by_key[override.key_or_group] = override
    space = SearchSpace()
    for name, override in by_key.items():
        if override.is_sweep_override():
            space.distributions[name] = _distribution(override)
            space.keys[name] = override.get_key_element()
            if isinstance(override.value(), ChoiceSweep):
                space.texts[name] = list(override.sweep_string_iterator())
        else:
            space.fixed.append(override.input_line)
    return space


def _distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    tags = sweep.tags
    if isinstance(sweep, IntervalSweep):
        if "int" in tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log="log" in tags)
        return FloatDistribution(sweep.start, sweep.end, log="log" in tags)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        kind = IntDistribution if all(isinstance(v, int) for v in values) else FloatDistribution
        return kind(values[0], values[-1], step=sweep.step)
    if isinstance(sweep, ChoiceSweep):
        values = list(override.sweep_iterator())
        plain = all(v is None or isinstance(v, bool | int | float | str) for v in values)
        # Lists and dicts are not valid Optuna choices: their override text stands in.
        return CategoricalDistribution(values if plain else list(override.sweep_string_iterator()))
    raise FtlabError(f"{override.input_line}: Optuna search needs choice, range or interval")


def check_seeds(seeds: Sequence[int] | None, space: SearchSpace) -> list[int]:
    """``hydra.sweeper.seeds`` as a list ([] when off); refused next to ``seed`` in the space."""
    if not seeds:
        return []
    if SEED_KEY in space.distributions or SEED_KEY in space.fixed_keys():
        where = "searched" if SEED_KEY in space.distributions else "fixed"
        raise FtlabError(
            f"hydra.sweeper.seeds={list(seeds)} runs every trial once per seed, but seed is also "
            f"{where} by this command: drop seed from the search (or the command line), or drop "
            "hydra.sweeper.seeds"
        )
    return list(seeds)


# --- the storage and the study -------------------------------------------------------------------


def shown_url(url: str) -> str:
    """The storage URL with its password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str, heartbeat_s: int | None = None) -> RDBStorage:
    """An Optuna RDB storage; with ``heartbeat_s``, trials of a worker that stopped beating for
    3 heartbeats are failed and queued again by any other worker (Optuna's heartbeat)."""
    from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

    kwargs: dict[str, Any] = {}
    if heartbeat_s:
        kwargs.update(
            heartbeat_interval=heartbeat_s,
            grace_period=3 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
        )
    error: BaseException | None = None
    for attempt in range(SCHEMA_RACE_RETRIES):
        try:
            # pool_pre_ping: a cluster job outlives idle database connections.
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as exc:
            error = exc
            # Workers started together on an empty database all create Optuna's tables; the
            # losers of that race see duplicate keys or existing tables, and find the tables
            # made a moment later.
            if not (isinstance(exc, IntegrityError) or "already exists" in str(exc)):
                break
            time.sleep(0.2 * (attempt + 1))
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    raise FtlabError(
        f"hydra.sweeper.storage={shown_url(url)} is unreachable ({reason}): start the "
        "database server (scripts/optuna_postgres.sh), or fix the URL "
        "(postgresql+psycopg://USER@HOST:PORT/DB, or null for SQLite in the sweep dir)"
    )


def _space_record(distributions: Mapping[str, BaseDistribution]) -> dict[str, str]:
    """The search space as the study records it: readable, and equal for equal spaces."""
    return {k: repr(d) for k, d in sorted(distributions.items())}


def open_study(
    name: str,
    storage: str | RDBStorage,
    direction: str | Sequence[str],
    sampler: Mapping[str, Any],
    fixed: list[str],
    distributions: Mapping[str, BaseDistribution] | None = None,
    algorithm: str = "tpe",
) -> optuna.Study:
    """Create the study, or load it to resume or to join other workers: checks that its
    directions, fixed overrides and search space are this command's."""
    directions = [direction] if isinstance(direction, str) else list(direction)
    for d in directions:
        if d not in DIRECTIONS:
            raise FtlabError(f"hydra.sweeper.direction={d}: use max or min")
    wanted = [DIRECTIONS[d] for d in directions]
    study = optuna.create_study(
        study_name=name, storage=storage, directions=wanted, load_if_exists=True
    )
    where = shown_url(storage) if isinstance(storage, str) else shown_url(storage.url)
    created = [d.name.lower() for d in study.directions]
    if created != wanted:
        raise FtlabError(
            f"study {name} in {where} was created to {' and '.join(created)}, not "
            f"{' and '.join(wanted)}: resume with its directions, or start a new study with "
            "hydra.sweeper.study_name=NAME"
        )
    _same_record(study, "fixed_overrides", sorted(fixed), "with")
    if distributions is not None:
        _same_record(study, "search_space", _space_record(distributions), "searching")
    study.sampler = make_sampler(algorithm, sampler, distributions or {}, len(study.trials))
    return study


def _same_record(study: optuna.Study, attr: str, now: Any, verb: str) -> None:
    created_with = study.user_attrs.get(attr)
    if created_with is None:
        study.set_user_attr(attr, now)
        return
    if created_with == now:
        return
    if isinstance(now, dict):
        was = " ".join(f"{k}={v}" for k, v in created_with.items() if now.get(k) != v)
        has = " ".join(f"{k}={v}" for k, v in now.items() if created_with.get(k) != v)
    else:
        was = " ".join(sorted(set(created_with) - set(now)))
        has = " ".join(sorted(set(now) - set(created_with)))
    raise FtlabError(
        f"study {study.study_name} was created {verb} {was or 'nothing'} where this command has "
        f"{has or 'nothing'}: resume with the original overrides and hydra.sweeper.params, or "
        "start a new study with hydra.sweeper.study_name=NAME"
    )


def make_sampler(
    algorithm: str,
    options: Mapping[str, Any],
    distributions: Mapping[str, BaseDistribution],
    n_existing: int = 0,
) -> optuna.samplers.BaseSampler:
    """``hydra.sweeper.algorithm`` (tpe, nsga2, random, grid) with ``hydra.sweeper.sampler``."""
    if algorithm not in SAMPLERS:
        raise FtlabError(
            f"hydra.sweeper.algorithm={algorithm} is unknown: use {', '.join(SAMPLERS)}"
        )
    kind = SAMPLERS[algorithm]
    kwargs = {k: v for k, v in options.items() if v is not None or k != "seed"}
    accepted = set(inspect.signature(kind).parameters)
    for key in kwargs:
        if key not in accepted:
            raise FtlabError(
                f"hydra.sweeper.sampler.{key} is not an option of {kind.__name__} "
                f"(hydra.sweeper.algorithm={algorithm}): drop it with "
                f"~hydra.sweeper.sampler.{key}"
            )
    if kwargs.get("seed") is not None:
        # A resumed study must not replay the first session's random startup points, nor the
        # workers of a SLURM array sample the same ones; one worker's search stays reproducible.
        kwargs["seed"] += n_existing + int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    if algorithm == "grid":
        kwargs["search_space"] = {k: _grid_values(k, d) for k, d in distributions.items()}
    return kind(**kwargs)


def _grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    step = getattr(dist, "step", None)
    if step is None:
        raise FtlabError(
            f"hydra.sweeper.params.{name} is a continuous interval, which "
            "hydra.sweeper.algorithm=grid cannot enumerate: use choice(...) or range(...)"
        )
    count = round((dist.high - dist.low) / step) + 1
    return [dist.low + i * step for i in range(count)]


def make_pruner(name: str, options: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """``hydra.sweeper.pruner`` (none, median, successive_halving, hyperband) with its options."""
    if name not in PRUNERS:
        raise FtlabError(f"hydra.sweeper.pruner={name} is unknown: use {', '.join(PRUNERS)}")
    try:
        return PRUNERS[name](**dict(options or {}))
    except TypeError as exc:
        raise FtlabError(
            f"hydra.sweeper.pruner_options={dict(options or {})} do not fit "
            f"{PRUNERS[name].__name__} ({exc}): see optuna.pruners.{PRUNERS[name].__name__}"
        ) from None


# --- the trials' bookkeeping ---------------------------------------------------------------------


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


# --- a trial's outcome, from its jobs' metrics.json ----------------------------------------------


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
    from ftlab.sweeps.report import flatten_metrics

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


# --- what a finished search leaves ---------------------------------------------------------------


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
