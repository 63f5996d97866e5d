"""Where a job sits in its sweep: its overrides, the sweep's id, its wandb group and tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig

WANDB_TAG_MAX = 64  # wandb rejects longer tags
# The callbacks entry through which an Optuna search links each job to its trial (pruning); its
# overrides are bookkeeping, not a setting, so reports and wandb tags leave them out.
TRIAL_CALLBACK = "optuna_trial"
TRIAL_PREFIX = f"callbacks.{TRIAL_CALLBACK}."


def is_bookkeeping(key: str) -> bool:
    """Whether an override key (``+``/``++`` prefixes allowed) is the sweeper's, not a setting."""
    return key.lstrip("+").startswith(TRIAL_PREFIX)


def parse_override(text: str) -> tuple[str, str]:
    """``"+optimizer.lr=0.1"`` -> ``("optimizer.lr", "0.1")``; add/force prefixes dropped."""
    key, _, value = text.partition("=")
    return key.lstrip("+"), value


def sweep_id(sweep_dir: str | Path) -> str:
    """The sweep's name, from its directory's last two parts.

    ``outputs/multirun/2024-05-01/12-30-00`` gives ``2024-05-01_12-30-00``: unique for Hydra's
    dated sweep dirs, and stable across resumes of one search directory.
    """
    path = Path(sweep_dir).resolve()
    return f"{path.parent.name}_{path.name}"


def wandb_context(hydra_cfg: DictConfig | None = None) -> dict[str, Any]:
    """``group``/``tags``/``name`` for the WandbLogger of a multirun job; ``{}`` for a single run.

    Every job of one sweep shares the group (the sweep's id), so wandb shows the sweep as one
    group of runs; the tags are the job's overrides. ``hydra_cfg`` defaults to the running job's.
    """
    if hydra_cfg is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        hydra_cfg = HydraConfig.get()
    if hydra_cfg.get("mode") != RunMode.MULTIRUN:
        return {}
    group = sweep_id(hydra_cfg.sweep.dir)
    tags = [
        override[:WANDB_TAG_MAX]
        for override in hydra_cfg.overrides.task
        if not is_bookkeeping(override)
    ]
    return {"group": group, "tags": tags, "name": f"{group}/{hydra_cfg.job.num}"}
