"""What an Optuna search's trial is worth: the mean over its seeds, or a point of a Pareto front
of several objectives; the study's plots; and the search inputs refused in one line."""

# The bad-input table keeps one message a line.
# ruff: noqa: E501

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import FAST, run_cli
from optuna.trial import TrialState

from ftlab.cli import conf_dir
from ftlab.sweeps.optuna_search import open_study, search_space
from ftlab.sweeps.report import write_report

TINY = [o for o in FAST if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]
SEARCH = ["hparams_search=optuna", *TINY]

SEARCH_CONFIG = Path(conf_dir()) / "hparams_search" / "optuna.yaml"


def search(sweep: Path, *overrides: str):
    return run_cli("train.py", "-m", *SEARCH, *overrides, f"hydra.sweep.dir={sweep}", run_dir=sweep)


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_each_trial_runs_once_per_seed_and_scores_their_mean(tmp_path: Path) -> None:
    proc = search(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.seeds=[0,1]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(
        study_name="test_cnn_digits", storage=f"sqlite:///{tmp_path}/optuna.db"
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.json")) == [
        "0-seed0",
        "0-seed1",
        "1-seed0",
        "1-seed1",
    ]
    for trial in study.trials:
        jobs = [tmp_path / f"{trial.number}-seed{s}" for s in (0, 1)]
        assert [metrics(j)["seed"] for j in jobs] == [0, 1]
        values = [metrics(j)["optimized_metric"]["value"] for j in jobs]
        assert trial.value == pytest.approx(statistics.fmean(values))
        assert trial.user_attrs["std"] == [pytest.approx(statistics.stdev(values))]
    # The job report: one row per trial's setting, its seeds pooled (mean ± std).
    summary = write_report(tmp_path)
    assert summary["seeds"].tolist() == ["0 1", "0 1"]
    by_value = sorted(summary["val/acc_mean"].tolist())
    assert by_value == pytest.approx(sorted(t.value for t in study.trials))
    row = "| 0 | complete |"
    assert row in (tmp_path / "study.md").read_text()
    assert "±" in (tmp_path / "study.md").read_text().split(row)[1].splitlines()[0]


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front_and_the_study_plots(tmp_path: Path) -> None:
    proc = search(
        tmp_path,
        "optimized_metric=[val/acc,trainable_params]",
        "hydra.sweeper.directions=[max,min]",
        "freeze=choice(none,linear_probe)",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.algorithm=nsga2",
        "~hydra.sweeper.sampler.n_startup_trials",
        "+hydra.sweeper.sampler.population_size=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(
        study_name="test_cnn_digits", storage=f"sqlite:///{tmp_path}/optuna.db"
    )
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    for trial in complete:
        job = metrics(Path(trial.user_attrs["job_dir"]))
        assert trial.values == [job["val"]["acc"], job["trainable_params"]]
        assert job["optimized_metric"]["name"] == "val/acc"  # the checkpoint keeps the first
    front = {t.number for t in study.best_trials}
    for trial in complete:  # the front: trials no other trial beats on both objectives
        beaten = any(
            o.values[0] >= trial.values[0]
            and o.values[1] <= trial.values[1]
            and o.values != trial.values
            for o in complete
        )
        assert (trial.number in front) == (not beaten)
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert {p["trial"] for p in results["pareto_front"]} == front
    study_md = (tmp_path / "study.md").read_text()
    pareto = study_md.split("## Pareto front")[1].split("## Plots")[0]
    assert {
        int(line.split("|")[1])
        for line in pareto.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    } == front
    for name in ("history", "importances", "parallel_coordinates", "pareto_front"):
        for suffix in ("html", "png"):
            assert (tmp_path / f"optuna_{name}.{suffix}").stat().st_size > 1000, name
    assert (tmp_path / "optuna_pareto_front.png").read_bytes()[:4] == b"\x89PNG"


def _created_elsewhere(sweep: Path, direction: str, params: dict[str, str]) -> None:
    """A study named like the command's, made by another command (other direction or space)."""
    space = search_space(params, SEARCH)
    storage = f"sqlite:///{sweep}/optuna.db"
    open_study("test_cnn_digits", storage, direction, {}, space.fixed, space.distributions)


BAD_SEARCHES = {
    "pruner": (
        ["hydra.sweeper.pruner=medain"],
        None,
        "error: hydra.sweeper.pruner=medain is unknown: use none, median, successive_halving, hyperband",
    ),
    "seeds and seed": (
        ["hydra.sweeper.seeds=[0,1]", "seed=choice(0,1,2)"],
        None,
        "error: hydra.sweeper.seeds=[0, 1] runs every trial once per seed, but seed is also searched by this command: drop seed",
    ),
    "other direction": (
        ["hydra.sweeper.n_trials=1"],
        ("min", None),
        "was created to minimize, not maximize: resume with its directions, or start a new study with hydra.sweeper.study_name=NAME",
    ),
    "other parameters": (
        ["hydra.sweeper.n_trials=1"],
        ("max", {"optimizer.lr": "interval(0.1,0.2)"}),
        "was created searching optimizer.lr=FloatDistribution(high=0.2, log=False, low=0.1, step=None) where this command has ",
    ),
    "directions without metrics": (
        ["hydra.sweeper.directions=[max,min]"],
        None,
        "error: hydra.sweeper.directions=['max', 'min'] has 2 direction(s) for optimized_metric=['val/acc']",
    ),
}


@pytest.mark.slow  # a fresh train.py -m process per case
@pytest.mark.parametrize(
    ("overrides", "existing", "message"), BAD_SEARCHES.values(), ids=BAD_SEARCHES
)
def test_a_bad_search_is_refused_in_one_line(tmp_path: Path, overrides, existing, message) -> None:
    if existing is not None:
        direction, params = existing
        default = yaml.safe_load(SEARCH_CONFIG.read_text())
        _created_elsewhere(tmp_path, direction, params or default["hydra"]["sweeper"]["params"])
    proc = search(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
    assert not list(tmp_path.glob("*/.hydra"))  # no job ran
