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

Split by job: the search space (:mod:`ftlab.sweeps.search_space`), the storage and the study
(:mod:`~ftlab.sweeps.search_storage`), a trial's outcome from its jobs
(:mod:`~ftlab.sweeps.search_outcomes`) and the workers' bookkeeping
(:mod:`~ftlab.sweeps.search_workers`). Every name stays importable from here (the sweeper
plugin reads them as ``optuna_search.<name>``), private helpers included.
"""

from __future__ import annotations

from ftlab.sweeps.search_outcomes import (  # noqa: F401
    Outcome,
    _job_error,
    _read,
    flat_metrics,
    job_values,
    trial_outcome,
)
from ftlab.sweeps.search_space import (  # noqa: F401
    SEED_KEY,
    SearchSpace,
    _distribution,
    check_seeds,
    search_space,
)
from ftlab.sweeps.search_storage import (  # noqa: F401
    DIRECTIONS,
    MAX_RETRIES,
    PRUNERS,
    SAMPLERS,
    SCHEMA_RACE_RETRIES,
    GridSampler,
    _grid_values,
    _same_record,
    _space_record,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    shown_url,
)
from ftlab.sweeps.search_workers import (  # noqa: F401
    RESULTS_FILE,
    _counts,
    _dead_here,
    finished,
    give_back,
    heartbeats,
    interrupt,
    job_names,
    record,
    recover,
    requeue,
    surplus,
    taken,
    worker_id,
    write_results,
)
