"""What the loggers get beyond their own config: wandb's offline fallback and sweep grouping,
and the run's settings. (The edge, ftlab.compose, builds the loggers from the config.)"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
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
    tags and name) wherever its config leaves them empty.
    """
    if not str(conf.get("_target_", "")).endswith("WandbLogger"):
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


def finish(loggers: list[Logger]) -> None:
    """Close wandb runs so each job of a multirun is its own run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
