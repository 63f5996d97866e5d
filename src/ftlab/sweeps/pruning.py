"""Optuna pruning from inside a trial's job: report the optimized metric once per validation
epoch to the shared study, stop when the study's pruner says so.

The sweeper (``hydra_plugins.ftlab_sweeper``) adds this callback to every job of a search with a
pruner, through the ``callbacks`` config group (``++callbacks.optuna_trial._target_=...``), with
the storage URL, study name and trial number: a job on any node reaches the same study.

Ranks agree: only rank 0 talks to the database; its decision is broadcast, so every rank sets
``should_stop`` after the same validation and stops at the same step. One host read of the
metric per validation epoch, none per training step. The best checkpoint so far stays (the
checkpoint callbacks run after this one), and train.py records ``status: pruned`` with the epoch
and the value in metrics.json (:func:`pruned_status`).

Optuna is imported on rank 0 only when the fit starts: a job without this callback never loads it.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger("ftlab")


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial`` of ``study_name`` after each validation; stop when
    pruned. ``pruner``/``pruner_options`` build the same pruner as the sweeper's (Optuna does
    not store pruners in the study)."""

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial: int,
        monitor: str,
        pruner: str = "median",
        pruner_options: dict[str, Any] | None = None,
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = int(trial)
        self.monitor = monitor
        self.pruner = pruner
        self.pruner_options = dict(pruner_options or {})
        self.stopped: dict[str, Any] | None = None  # {epoch, value, step} once pruned
        self._trial: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._trial = self._open_trial()

    def _open_trial(self) -> Any:
        import optuna

        from ftlab.sweeps.optuna_search import make_pruner, open_storage

        storage = open_storage(self.storage)
        study = optuna.load_study(
            study_name=self.study_name,
            storage=storage,
            pruner=make_pruner(self.pruner, self.pruner_options),
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            study._study_id, self.trial_number
        )
        return optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Fitting only: the validate and test after fit (best checkpoint) are not an epoch.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if trainer.sanity_checking or not fitting or self.stopped is not None:
            return
        decision: tuple[bool, float] = (False, math.nan)
        if trainer.is_global_zero and self._trial is not None:
            metric = trainer.callback_metrics.get(self.monitor)
            if metric is not None:
                value = float(metric)  # the one host read, once per validation
                if math.isfinite(value):
                    with warnings.catch_warnings():
                        # With hydra.sweeper.seeds, each seed's job reports to the one trial:
                        # the first value of an epoch stands, and Optuna warns for the others.
                        warnings.filterwarnings("ignore", "The reported value is ignored")
                        self._trial.report(value, trainer.current_epoch)
                    decision = (self._trial.should_prune(), value)
        prune, value = trainer.strategy.broadcast(decision, src=0)
        if prune:
            self.stopped = {
                "epoch": trainer.current_epoch,
                "value": value,
                "step": trainer.global_step,
            }
            trainer.should_stop = True
            log.info(
                "trial %d pruned at epoch %d (%s = %.4g): stopping",
                self.trial_number,
                trainer.current_epoch,
                self.monitor,
                value,
            )


def pruned_status(trainer: L.Trainer) -> dict[str, Any]:
    """``{"status": "pruned", "pruned": {epoch, value, step}}`` when a pruner stopped the run,
    else ``{}``: train.py merges it into metrics.json."""
    for callback in trainer.callbacks:
        if isinstance(callback, OptunaPruning) and callback.stopped is not None:
            return {"status": "pruned", "pruned": callback.stopped}
    return {}
