"""What an Optuna search leaves next to report.md: ``study.md`` (every trial: state, parameters,
value mean ± std over seeds; the Pareto front of a multi-objective study) and Optuna's own
plots, each as interactive HTML (plotly) and as PNG (``optuna.visualization.matplotlib``: plotly's
static export needs a browser, matplotlib does not).

- ``optuna_history``: the objective by trial, with the best so far;
- ``optuna_importances``: which parameters mattered (fANOVA; needs 2 complete trials);
- ``optuna_parallel_coordinates``: every complete trial's parameters and value;
- ``optuna_pareto_front``: the trade-off between 2 or 3 objectives (multi-objective only).

A plot Optuna cannot draw yet (too few trials, one parameter value) is skipped with its reason in
the log and in study.md. At its end, every search also writes ``ftlab-report``'s files
(report.md, report.csv, report.png, provenance.json) for its first objective, so study.md always
has its report.md beside it; ``ftlab-report <sweep_dir>`` rewrites them with other options.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("ftlab")

STUDY_FILE = "study.md"
PLOT_PREFIX = "optuna_"


def write_study_summary(
    study: optuna.Study, sweep_dir: Path, objectives: Sequence[str]
) -> dict[str, str]:
    """Write study.md and the plots into ``sweep_dir``; returns ``{plot: "written" | reason}``."""
    plots = write_plots(study, sweep_dir, objectives)
    _write_atomic(sweep_dir / STUDY_FILE, study_markdown(study, objectives, plots))
    write_sweep_report(study, sweep_dir, objectives)
    return plots


def write_sweep_report(study: optuna.Study, sweep_dir: Path, objectives: Sequence[str]) -> None:
    """report.md and the other ``ftlab-report`` files, for the first objective in the study's
    direction: the same files as the command recorded in provenance.json writes."""
    from ftlab.errors import FtlabError
    from ftlab.sweeps.report import write_report

    metric = objectives[0]
    mode = "max" if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else "min"
    command = shlex.join(["ftlab-report", str(sweep_dir), "--metric", metric, "--mode", mode])
    try:
        write_report(sweep_dir, metric, mode, command=command)
    except FtlabError as err:  # e.g. no job wrote metrics.json: study.md says why
        log.warning("report.md not written: %s", err)
        return
    log.info("wrote %s (as %s would)", sweep_dir / "report.md", command)


def write_plots(study: optuna.Study, out: Path, objectives: Sequence[str]) -> dict[str, str]:
    """Each plot as ``optuna_<name>.html`` and ``.png``; ``{name: "written" | why not}``."""
    import matplotlib

    matplotlib.use("Agg")  # this runs in the sweeper process, never under a notebook's backend
    import matplotlib.pyplot as plt
    from optuna import visualization as html
    from optuna.visualization import matplotlib as png

    multi = len(study.directions) > 1
    # Single-objective plots of a multi-objective study show its first objective.
    target: dict[str, Any] = {"target": _first_value, "target_name": objectives[0]} if multi else {}
    named: dict[str, tuple[Callable, Callable, dict[str, Any]]] = {
        "history": (html.plot_optimization_history, png.plot_optimization_history, target),
        "importances": (html.plot_param_importances, png.plot_param_importances, target),
        "parallel_coordinates": (
            html.plot_parallel_coordinate,
            png.plot_parallel_coordinate,
            target,
        ),
    }
    if multi:
        names = {"target_names": list(objectives)}
        named["pareto_front"] = (html.plot_pareto_front, png.plot_pareto_front, names)
    done: dict[str, str] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for name, (interactive, static, kwargs) in named.items():
        if not complete:
            done[name] = "no complete trial yet"
            continue
        try:
            _write_atomic_html(interactive(study, **kwargs), out / f"{PLOT_PREFIX}{name}.html")
            axes = static(study, **kwargs)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.savefig(out / f"{PLOT_PREFIX}{name}.png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            done[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            done[name] = f"skipped: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
            log.info("optuna plot %s %s", name, done[name])
    return done


def _first_value(trial: FrozenTrial) -> float:
    return trial.values[0]


def study_markdown(
    study: optuna.Study, objectives: Sequence[str], plots: dict[str, str] | None = None
) -> str:
    """study.md: trial counts by state (pruned apart from failed), one row per trial (value as
    mean ± std over its seeds), the best trial or the Pareto front, and the plots."""
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    interrupted = sum(
        t.state == TrialState.FAIL and "error" not in t.user_attrs and "surplus" not in t.user_attrs
        for t in trials
    )
    directions = [d.name.lower() for d in study.directions]
    goal = ", ".join(f"{o} ({d})" for o, d in zip(objectives, directions, strict=True))
    lines = [
        f"# Optuna study {study.study_name}",
        "",
        f"{len(trials)} trials: {states[TrialState.COMPLETE]} complete, "
        f"{states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL] - interrupted} failed, {interrupted} interrupted (rerun), "
        f"{states[TrialState.RUNNING]} running, {states[TrialState.WAITING]} queued. "
        f"Objective: {goal}; values are the mean ± std over each trial's seeds.",
        "",
    ]
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    header = ["trial", "state", *params, *objectives, "job"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in trials:
        cells = [str(trial.number), _state(trial)]
        cells += [_short(trial.params.get(p, "")) for p in params]
        cells += _values(trial, len(objectives))
        cells.append(Path(trial.user_attrs.get("job_dir", "")).name)
        lines.append("| " + " | ".join(cells) + " |")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(directions) == 1:
        best = study.best_trial
        lines += ["", f"Best: trial {best.number}, {objectives[0]} {_values(best, 1)[0]}"]
    elif complete:
        lines += ["", "## Pareto front", "", "Trials no other trial beats on every objective:", ""]
        lines += ["| trial | " + " | ".join([*params, *objectives]) + " |"]
        lines += ["|" + "---|" * (1 + len(params) + len(objectives))]
        for trial in sorted(study.best_trials, key=lambda t: t.values):
            cells = [str(trial.number), *(_short(trial.params.get(p, "")) for p in params)]
            lines.append("| " + " | ".join(cells + _values(trial, len(objectives))) + " |")
    if plots:
        lines += ["", "## Plots", ""]
        for name, result in plots.items():
            file = f"{PLOT_PREFIX}{name}"
            shown = f"[{file}.html]({file}.html), [{file}.png]({file}.png)"
            lines.append(f"- {name}: {shown if result == 'written' else result}")
    return "\n".join(lines) + "\n"


def _state(trial: FrozenTrial) -> str:
    if trial.state == TrialState.FAIL:
        if "surplus" in trial.user_attrs:
            return "surplus"
        return "failed" if "error" in trial.user_attrs else "interrupted"
    return trial.state.name.lower()


def _values(trial: FrozenTrial, count: int) -> list[str]:
    values = trial.values or []
    if trial.state == TrialState.PRUNED and not values and trial.intermediate_values:
        last = max(trial.intermediate_values)
        return [f"{trial.intermediate_values[last]:.4g} (epoch {last})"] + ["—"] * (count - 1)
    stds = trial.user_attrs.get("std") or [math.nan] * count
    cells = []
    for i in range(count):
        if i >= len(values) or values[i] is None:
            cells.append("—")
        elif math.isnan(stds[i]):
            cells.append(f"{values[i]:.4g}")
        else:
            cells.append(f"{values[i]:.4g} ± {stds[i]:.2g}")
    return cells


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_atomic(path: Path, text: str) -> None:
    """Two workers of one study may write at once: a reader sees one whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_atomic_html(figure: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    # plotly.min.js once beside the pages: they open offline, and stay small.
    figure.write_html(tmp, include_plotlyjs="directory")
    os.replace(tmp, path)
