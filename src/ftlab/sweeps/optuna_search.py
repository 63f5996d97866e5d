"""Optuna search behind ``hparams_search=optuna``: search space, resumable study, trial results.

The Hydra half (asking, launching jobs, telling) is ``hydra_plugins.ftlab_sweeper``; this module
holds everything that touches Optuna, on its current API (ask/tell).

Resume semantics: the study lives in SQLite inside the sweep directory, and ``n_trials`` is the
study's *total* of finished trials (complete, pruned, or failed by its job). Running the same
command again runs only what is left. A trial cut off by an interruption (Ctrl-C, a killed
process) is marked failed without an ``error`` attribute, does not count, and is replaced,
unless its job had written a completed ``metrics.json``: then its value is kept.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, Trial, TrialState

from ftlab.errors import FtlabError

log = logging.getLogger("ftlab")

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
RESULTS_FILE = "optimization_results.yaml"


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


def open_study(
    name: str,
    storage: str,
    direction: str,
    sampler: Mapping[str, Any],
    fixed: list[str],
) -> optuna.Study:
    """Create the study, or load it to resume: checks direction and fixed overrides match."""
    if direction not in DIRECTIONS:
        raise FtlabError(f"hydra.sweeper.direction={direction}: use max or min")
    study = optuna.create_study(
        study_name=name, storage=storage, direction=DIRECTIONS[direction], load_if_exists=True
    )
    if study.direction.name.lower() != DIRECTIONS[direction]:
        raise FtlabError(
            f"study {name} in {storage} was created to {study.direction.name.lower()}, "
            f"not {DIRECTIONS[direction]}: pick another hydra.sweeper.study_name"
        )
    created_with = study.user_attrs.get("fixed_overrides")
    if created_with is None:
        study.set_user_attr("fixed_overrides", sorted(fixed))
    elif created_with != sorted(fixed):
        was = " ".join(sorted(set(created_with) - set(fixed))) or "nothing"
        now = " ".join(sorted(set(fixed) - set(created_with))) or "nothing"
        raise FtlabError(
            f"study {name} was created with {was} where this command has {now}: resume with "
            "the original overrides, or start a new study with hydra.sweeper.study_name=NAME"
        )
    kwargs = dict(sampler)
    if kwargs.get("seed") is not None:
        # A resumed study must not replay the first session's random startup points.
        kwargs["seed"] += len(study.trials)
    study.sampler = optuna.samplers.TPESampler(**kwargs)
    return study


def finished(study: optuna.Study) -> int:
    """Finished trials, the ones ``n_trials`` counts: complete, pruned, or failed by their job."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def interrupt(
    study: optuna.Study,
    trials: Sequence[Trial | FrozenTrial] | None = None,
    sweep_dir: Path | None = None,
) -> int:
    """Mark trials (default: every RUNNING one, left by a killed session) as interrupted;
    returns how many. With ``sweep_dir``, a trial whose job finished (its ``metrics.json`` says
    completed) before the session died is recorded complete with its value instead: the kill
    came between the job's last write and the study's.

    Only one sweep process may work on a study at a time: another's running trials would look
    interrupted too.
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    cut_off = 0
    for trial in trials:
        value = _finished_value(sweep_dir / str(trial.number)) if sweep_dir else None
        if value is not None:
            # A FrozenTrial from get_trials has no set_user_attr; a Trial handle on its id does.
            Trial(study, trial._trial_id).set_user_attr(
                "job_dir", str(sweep_dir / str(trial.number))
            )
            study.tell(trial.number, value, skip_if_finished=True)
            log.info("trial %d had finished before the interruption: kept", trial.number)
        else:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            cut_off += 1
    return cut_off


def _finished_value(job_dir: Path) -> float | None:
    """The optimized metric a completed job recorded in its metrics.json, if it did."""
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
        value = float(metrics["optimized_metric"]["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if metrics.get("status") == "completed" and math.isfinite(value) else None


def tell(study: optuna.Study, trial: Trial, result: JobReturn) -> None:
    """Record a job's outcome: its return value (train.py's optimized metric) or its error."""
    if result.hydra_cfg is not None:
        trial.set_user_attr("job_dir", str(result.hydra_cfg.hydra.runtime.output_dir))
    try:
        value = result.return_value  # raises the job's exception when it failed
    except Exception as exc:
        value, error = None, f"{type(exc).__name__}: {exc}"
    else:
        error = None if value is not None else "the job returned no value: set optimized_metric"
    if error is None and not math.isfinite(float(value)):
        error = f"the job returned {value}"
    if error is not None:
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, error)
    else:
        study.tell(trial, float(value))


def write_results(study: optuna.Study, path: Path, n_trials: int) -> None:
    """optimization_results.yaml: the best trial's params, value and job directory."""
    results: dict[str, Any] = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "n_trials": n_trials,
        "finished": finished(study),
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        results.update(
            best_trial=best.number,
            best_value=best.value,
            best_params=best.params,
            best_job_dir=best.user_attrs.get("job_dir"),
        )
        log.info("best trial %d: value %s with %s", best.number, best.value, best.params)
    path.write_text(yaml.safe_dump(results, sort_keys=False))
