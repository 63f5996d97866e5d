"""Sweeps: the multirun report (``ftlab.sweeps.report``; its effective-robustness plot in
``ftlab.sweeps.robustness``), Optuna search
(``ftlab.sweeps.optuna_search`` behind ``hparams_search=optuna``; pruning from inside a job in
``ftlab.sweeps.pruning``, the study's plots and ``study.md`` in ``ftlab.sweeps.plots``) and the
wandb context of a job.

Kept free of pandas and optuna so that ``ftlab.loggers`` can import :func:`wandb_context` cheaply.
"""

from ftlab.sweeps.context import parse_override, sweep_id, wandb_context

__all__ = ["parse_override", "sweep_id", "wandb_context"]
