"""``hydra/sweeper=ftlab_optuna``: a resumable Optuna search over Hydra jobs.

Hydra finds this module by scanning the ``hydra_plugins`` namespace on every start, so it imports
nothing heavy; the Optuna side is ``ftlab.sweeps.optuna_search``.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("ftlab")


@dataclass
class FtlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.ftlab_sweeper.optuna_sweeper.FtlabOptunaSweeper"
    study_name: str = "ftlab"
    # null: sqlite:///<sweep dir>/optuna.db; any Optuna storage URL works.
    storage: str | None = None
    direction: str = "max"  # max | min (maximize | minimize)
    n_trials: int = 20  # total finished trials of the study, across resumes
    n_jobs: int = 1  # trials asked and launched together (parallel with a parallel launcher)
    # TPESampler keyword arguments, e.g. seed, n_startup_trials, multivariate.
    sampler: dict[str, Any] = field(default_factory=lambda: {"seed": None})
    # key: sweep expression in Hydra's grammar, e.g. optimizer.lr: tag(log, interval(1e-5, 1e-2))
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="ftlab_optuna", node=FtlabOptunaSweeperConf, provider="ftlab"
)


class FtlabOptunaSweeper(Sweeper):
    """Asks Optuna for trials, runs them as Hydra jobs (job number = trial number), tells back."""

    def __init__(self, **params: Any) -> None:
        self.settings = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in params.items()
        }
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        from ftlab.cli import USER_ERROR_EXIT
        from ftlab.errors import FtlabError

        try:
            return self._sweep(arguments)
        except FtlabError as exc:
            # The same one-line report as a bad input to a single run (ftlab.cli).
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)

    def _sweep(self, arguments: list[str]) -> list[JobReturn]:
        from ftlab.sweeps import optuna_search as search

        assert self.config is not None and self.launcher is not None
        s = self.settings
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage = s["storage"] or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        space = search.search_space(s["params"] or {}, arguments)
        study = search.open_study(
            s["study_name"], storage, s["direction"], s["sampler"], space.fixed
        )
        if stale := search.interrupt(study, sweep_dir=sweep_dir):
            log.info(
                "study %s: %d interrupted trial(s) marked failed; they will be rerun",
                s["study_name"],
                stale,
            )
        log.info(
            "study %s in %s: %d of %d trials finished",
            s["study_name"],
            storage,
            search.finished(study),
            s["n_trials"],
        )
        returns: list[JobReturn] = []
        while (todo := min(s["n_jobs"], s["n_trials"] - search.finished(study))) > 0:
            trials = [study.ask(space.distributions) for _ in range(todo)]
            try:
                results = self._launch([space.overrides(t.params) for t in trials], trials)
            except BaseException:
                search.interrupt(study, trials)  # Ctrl-C or a launcher error: rerun on resume
                raise
            for trial, result in zip(trials, results, strict=True):
                search.tell(study, trial, result)
            returns.extend(results)
        search.write_results(study, sweep_dir / search.RESULTS_FILE, s["n_trials"])
        return returns

    def _launch(self, batch: list[list[str]], trials: list[Any]) -> list[JobReturn]:
        """Run a batch; job numbers (and so job directories) are the trial numbers."""
        self.validate_batch_is_legal(batch)
        numbers = [t.number for t in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
        return [
            self.launcher.launch([o], initial_job_idx=n)[0]
            for o, n in zip(batch, numbers, strict=True)
        ]
