"""``study.ask`` whose new trial names its worker in the same write that creates it.

A trial naming no worker is taken for a live worker's for a grace period (3 heartbeats,
ftlab.sweeps.optuna_search.recover): a worker killed between Optuna's creating write and its
``set_user_attr`` left such a trial. Optuna's ``ask()`` takes no attributes for the trial it
creates, but its storages' ``create_new_trial`` takes a template whose ``user_attrs`` are
written in the same transaction (RDBStorage: one session). So for the duration of one
``ask`` the study's storage creates trials from a template carrying the worker.
"""

from __future__ import annotations

import datetime
from typing import Any

from optuna.trial import FrozenTrial, Trial, TrialState


def ask_named(study: Any, distributions: dict[str, Any], worker: str) -> Trial:
    """``study.ask(distributions)``, the new trial created with ``user_attrs.worker``."""
    storage = study._storage  # Optuna 3-5: the study's (cached) storage
    original = storage.create_new_trial

    def create(study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is None:
            template_trial = FrozenTrial(
                number=-1,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=datetime.datetime.now(),
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs={"worker": worker},
                system_attrs={},
                intermediate_values={},
                trial_id=-1,
            )
        return original(study_id, template_trial)

    storage.create_new_trial = create  # an instance attribute, shadowing the method
    try:
        trial = study.ask(distributions)
    finally:
        del storage.create_new_trial
    # A queued trial (a requeued one) is taken by ask() without a create: named here.
    trial.set_user_attr("worker", worker)
    return trial
