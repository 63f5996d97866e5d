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

from ftlab.sweeps.context import TRIAL_CALLBACK

log = logging.getLogger("ftlab")


@dataclass
class FtlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.ftlab_sweeper.optuna_sweeper.FtlabOptunaSweeper"
    study_name: str = "ftlab"
    # null: sqlite:///<sweep dir>/optuna.db (one machine); any Optuna RDB URL, e.g.
    # postgresql+psycopg://ftlab@login1:5432/ftlab, for many workers on one study.
    storage: str | None = None
    direction: str = "max"  # max | min (maximize | minimize)
    # Several objectives: one direction per name of optimized_metric=[val/acc,trainable_params].
    directions: list[str] | None = None
    n_trials: int = 20  # total finished trials of the study, across resumes and workers
    n_jobs: int = 1  # trials asked and launched together (parallel with a parallel launcher)
    algorithm: str = "tpe"  # tpe | nsga2 | random | grid (choice and range parameters only)
    # The sampler's keyword arguments, e.g. seed, n_startup_trials, multivariate (TPE).
    sampler: dict[str, Any] = field(default_factory=lambda: {"seed": None})
    # key: sweep expression in Hydra's grammar, e.g. optimizer.lr: tag(log, interval(1e-5, 1e-2))
    params: dict[str, str] = field(default_factory=dict)
    pruner: str = "none"  # none | median | successive_halving | hyperband
    pruner_options: dict[str, Any] = field(default_factory=dict)  # the pruner class's kwargs
    seeds: list[int] | None = None  # each trial runs once per seed; its value is their mean
    heartbeat_s: int = 60  # a worker silent for 3 heartbeats is dead: its trials are rerun


ConfigStore.instance().store(
    group="hydra/sweeper", name="ftlab_optuna", node=FtlabOptunaSweeperConf, provider="ftlab"
)


class FtlabOptunaSweeper(Sweeper):
    """Asks Optuna for trials, runs them as Hydra jobs (job directory = trial number), tells back.

    Any number of these processes may run the same command on one study (a SLURM array of
    workers, say): each asks a trial only while the study's finished and running trials leave
    room in ``n_trials`` (ftlab.sweeps.optuna_search).
    """

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

    def _objectives(self) -> tuple[list[str], list[str]]:
        """The metric names and their directions: ``optimized_metric`` (one name or a list)
        with ``direction`` or ``directions``."""
        from ftlab.errors import FtlabError

        assert self.config is not None
        metric = self.config.get("optimized_metric")
        names = list(metric) if OmegaConf.is_list(metric) else [metric]
        directions = self.settings["directions"] or [self.settings["direction"]]
        if len(directions) != len(names):
            raise FtlabError(
                f"hydra.sweeper.directions={directions} has {len(directions)} direction(s) for "
                f"optimized_metric={names}: give one direction per metric, e.g. "
                "optimized_metric=[val/acc,trainable_params] hydra.sweeper.directions=[max,min]"
            )
        return [str(n) for n in names], [str(d) for d in directions]

    def _sweep(self, arguments: list[str]) -> list[JobReturn]:
        import optuna

        from ftlab.errors import FtlabError
        from ftlab.sweeps import optuna_search as search
        from ftlab.sweeps.plots import write_study_summary
        from hydra_plugins.ftlab_sweeper.space_check import check_space_keys

        assert self.config is not None and self.launcher is not None
        # ftlab's own lines say what happens to the study; Optuna's INFO lines repeat them.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.settings
        space = search.search_space(s.get("params") or {}, arguments)
        check_space_keys([*space.keys.values(), *space.fixed_keys()], self.config)  # before writes
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = s["storage"] or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        objectives, directions = self._objectives()
        if len(objectives) > 1:  # each job optimizes (keeps the checkpoint of) the first one
            space.fixed = [o for k, o in space.fixed_keys().items() if k != "optimized_metric"]
        seeds = search.check_seeds(s["seeds"], space)
        pruner = search.make_pruner(s["pruner"], s["pruner_options"])
        if len(objectives) > 1 and s["pruner"] != "none":
            raise FtlabError(
                f"hydra.sweeper.pruner={s['pruner']} with {len(objectives)} objectives: Optuna "
                "prunes single-objective studies only; set hydra.sweeper.pruner=none"
            )
        storage = search.open_storage(url, s["heartbeat_s"])
        study = search.open_study(
            s["study_name"],
            storage,
            directions,
            s["sampler"],
            space.fixed,
            space.distributions,
            s["algorithm"],
        )
        study.pruner = pruner
        grace = 3 * s["heartbeat_s"]
        if stale := search.recover(study, sweep_dir, objectives, grace):
            log.info("study %s: %d interrupted trial(s) queued to rerun", s["study_name"], stale)
        log.info(
            "study %s in %s: %d of %d trials finished",
            s["study_name"],
            search.shown_url(url),
            search.finished(study),
            s["n_trials"],
        )
        returns: list[JobReturn] = []
        while True:
            search.recover(study, sweep_dir, objectives, grace)  # workers that died since
            room = min(s["n_jobs"], s["n_trials"] - search.taken(study))
            trials = [self._ask(study, space) for _ in range(max(room, 0))]
            for trial in [t for t in trials if search.surplus(study, t, s["n_trials"])]:
                search.give_back(study, trial)
                trials.remove(trial)
            if not trials:
                break
            returns.extend(self._run_trials(study, trials, space, seeds, url, objectives))
        search.write_results(study, sweep_dir / search.RESULTS_FILE, s["n_trials"], url, objectives)
        write_study_summary(study, sweep_dir, objectives)
        return returns

    @staticmethod
    def _ask(study: Any, space: Any) -> Any:
        """A new trial, its worker recorded at once: a trial naming no worker is taken for a
        live one's for a grace period (ftlab.sweeps.optuna_search.recover), so the window in
        which a kill leaves it unnamed must be as short as one write."""
        from ftlab.sweeps import optuna_search as search
        from ftlab.sweeps.named_ask import ask_named

        return ask_named(study, space.distributions, search.worker_id())  # named as created

    def _run_trials(
        self,
        study: Any,
        trials: list[Any],
        space: Any,
        seeds: list[int],
        url: str,
        objectives: list[str],
    ) -> list[JobReturn]:
        """Launch every job of ``trials`` (one per seed), heartbeats running, and tell back."""
        from ftlab.sweeps import optuna_search as search

        assert self.config is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        batch, owners = [], []
        for trial in trials:
            names = search.job_names(trial.number, seeds)
            trial.set_user_attr("job_names", names)
            for name, seed in zip(names, seeds or [None], strict=True):
                overrides = [*space.overrides(trial.params), f"hydra.sweep.subdir={name}"]
                overrides += [] if seed is None else [f"seed={seed}"]
                overrides += self._trial_overrides(trial.number, url, objectives)
                batch.append(overrides)
                owners.append(trial)
        self.validate_batch_is_legal(batch)
        try:
            with search.heartbeats(study, trials):
                results = list(self.launcher.launch(batch, initial_job_idx=trials[0].number))
        except BaseException:
            search.interrupt(study, trials)  # Ctrl-C or a launcher error: rerun on resume
            raise
        for trial in trials:
            names = trial.user_attrs["job_names"]
            errors = [_error(r) for r, o in zip(results, owners, strict=True) if o is trial]
            outcome = search.trial_outcome([sweep_dir / n for n in names], objectives, errors)
            search.record(study, trial, outcome, [sweep_dir / n for n in names])
        return results

    def _trial_overrides(self, number: int, url: str, objectives: list[str]) -> list[str]:
        """Each job's link to its trial: with several objectives, the first is the one its
        checkpoint keeps; with a pruner, the callback that reports to the trial."""
        assert self.config is not None
        s = self.settings
        overrides = []
        if len(objectives) > 1:
            mode = "max" if s["directions"][0] in ("max", "maximize") else "min"
            overrides += [f"optimized_metric={_quoted(objectives[0])}", f"optimized_mode={mode}"]
        if s["pruner"] != "none":
            node = f"++callbacks.{TRIAL_CALLBACK}"
            options = ",".join(f"{k}:{v}" for k, v in (s["pruner_options"] or {}).items())
            overrides += [
                f"{node}._target_=ftlab.sweeps.pruning.OptunaPruning",
                f"{node}.storage={_quoted(url)}",
                f"{node}.study_name={_quoted(s['study_name'])}",
                f"{node}.trial={number}",
                f"{node}.monitor={_quoted(objectives[0])}",
                f"{node}.pruner={s['pruner']}",
                f"{node}.pruner_options={{{options}}}",
            ]
        return overrides


def _quoted(text: str) -> str:
    """A value as a quoted override string: URLs hold ':', '/', '@', '?' and '='."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error(result: JobReturn) -> str:
    """The job's exception as text, or "" when it returned."""
    try:
        result.return_value  # noqa: B018 -- raises the job's exception when it failed
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""
