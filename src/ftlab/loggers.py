"""What the loggers get beyond their own config: wandb's offline fallback and sweep grouping,
MLflow's store and sweep experiment, the run's settings, and MLflow's end-of-run artifacts.
(The edge, ftlab.compose, builds the loggers from the config.)"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

log = logging.getLogger("ftlab")


def wandb_has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (where ``wandb login`` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def offline_note(save_dir: str | None, reason: str = "no API key configured") -> str:
    """Where an offline wandb run is written, and the command that uploads it.

    wandb writes the run to ``<save_dir>/wandb/offline-run-<time>-<id>/``. ``wandb sync`` takes
    that directory (from wandb 0.30 also the ``wandb/`` one above it) and finds nothing to
    upload when given ``<save_dir>`` itself.
    """
    runs = f"{save_dir or '.'}/wandb/offline-run-*"
    return f"wandb: {reason}, logging offline to {runs} (upload later: `wandb sync {runs}`)"


def logger_kwargs(conf: Mapping[str, Any], sweep: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments a logger config gets besides its own keys.

    A WandbLogger without ``offline`` set runs offline when no API key is configured (logged
    with the command that uploads it later); in a sweep it gets ``sweep`` (the job's group,
    tags and name) wherever its config leaves them empty. An MLFlowLogger gets
    :func:`mlflow_kwargs`.
    """
    target = str(conf.get("_target_", ""))
    if target.endswith("MLFlowLogger"):
        return mlflow_kwargs(conf, sweep)
    if not target.endswith("WandbLogger"):
        return {}
    kwargs: dict[str, Any] = {}
    if conf.get("offline") is None:
        forced = os.environ.get("WANDB_MODE") == "offline"
        offline = forced or not wandb_has_credentials()
        kwargs["offline"] = offline
        if offline:
            reason = "WANDB_MODE=offline" if forced else "no API key configured"
            log.info(offline_note(conf.get("save_dir"), reason))
    return kwargs | {k: v for k, v in sweep.items() if not conf.get(k)}


SQLITE = "sqlite:///"
SINGLE_RUN_EXPERIMENT = "ftlab"


def mlflow_kwargs(conf: Mapping[str, Any], sweep: Mapping[str, Any]) -> dict[str, Any]:
    """What an MLFlowLogger gets besides its own keys.

    A sqlite store's folder is made, and its artifacts go to ``mlartifacts/`` beside it unless
    ``artifact_location`` is set (MLflow's own default is ``./mlruns`` of whatever folder the run
    started in). The jobs of one sweep share an experiment named after the sweep (as wandb's
    group), each named ``<sweep>/<job>`` and tagged with the sweep and its overrides; a single
    run goes to the ``ftlab`` experiment. Keys the config sets are left alone.
    """
    kwargs: dict[str, Any] = {}
    uri = str(conf.get("tracking_uri") or "")
    if uri.startswith(SQLITE):
        store = Path(uri.removeprefix(SQLITE)).parent
        store.mkdir(parents=True, exist_ok=True)
        if not conf.get("artifact_location"):
            kwargs["artifact_location"] = str((store / "mlartifacts").resolve())
    if not conf.get("experiment_name"):
        kwargs["experiment_name"] = sweep.get("group") or SINGLE_RUN_EXPERIMENT
    if sweep:
        if not conf.get("run_name"):
            kwargs["run_name"] = sweep["name"]
        tags = {"sweep": sweep["group"], "overrides": " ".join(sweep.get("tags", []))}
        kwargs["tags"] = {**tags, **(conf.get("tags") or {})}
    return kwargs


def flat_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``group.key`` entries of numbers, flags and text (lists as text), the
    form every logger can filter and compare runs by (W&B config, TensorBoard hparams)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flat_settings(value, f"{name}.")
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = value
        else:  # a list, or an empty mapping
            flat[name] = str(value)
    return flat


def log_settings(
    loggers: list[Logger], settings: Mapping[str, Any], metrics: Mapping[str, float] | None = None
) -> None:
    """Give every logger the run's settings; with ``metrics`` (the run's final numbers) also as
    TensorBoard's hparams metrics, so its HPARAMS tab compares runs by them."""
    flat = flat_settings(settings)
    for logger in loggers:
        if metrics is None:
            logger.log_hyperparams(flat)
        elif type(logger).__name__ == "TensorBoardLogger":
            logger.log_hyperparams(flat, metrics=dict(metrics))


def log_artifacts(
    loggers: list[Logger], run_dir: Path, best: str | None, record: Mapping[str, Any]
) -> None:
    """Give each MLflow run the finished run's files: ``metrics.json``, the run's plots
    (``*.png``) and ``checkpoint.json``, the best checkpoint's path and its model record (what
    ``eval.py`` and the exports rebuild the model from). Call on rank zero, after ``metrics.json``
    is written; the run may already be marked finished (Lightning ends it when fit ends)."""
    for logger in loggers:
        if type(logger).__name__ != "MLFlowLogger":
            continue
        client, run_id = logger.experiment, logger.run_id
        client.log_dict(run_id, {"path": best, "record": dict(record)}, "checkpoint.json")
        for path in [run_dir / "metrics.json", *sorted(run_dir.glob("*.png"))]:
            if path.is_file():
                client.log_artifact(run_id, str(path))


def finish(loggers: list[Logger]) -> None:
    """Close wandb runs so each job of a multirun is its own run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
