"""ftlab's Hydra plugins: ``hydra/sweeper=ftlab_optuna``, which ``hparams_search=optuna`` picks."""
