"""Sweeps: the multirun report (``ftlab.sweeps.report``), Optuna search
(``ftlab.sweeps.optuna_search`` behind ``hparams_search=optuna``) and the wandb context of a job.

Kept free of pandas and optuna so that ``ftlab.loggers`` can import :func:`wandb_context` cheaply.
"""

from ftlab.sweeps.context import parse_override, sweep_id, wandb_context

__all__ = ["parse_override", "sweep_id", "wandb_context"]
