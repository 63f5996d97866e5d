"""The shared study of an Optuna search: its RDB storage (SQLite in the sweep directory by
default), the study checked against the search that made it, its sampler and pruner."""

from __future__ import annotations

import inspect
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
)
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from ftlab.errors import FtlabError

log = logging.getLogger("ftlab")


DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


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


# Heartbeats and the retry callback are "experimental" in Optuna; their warnings say nothing a
# user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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
