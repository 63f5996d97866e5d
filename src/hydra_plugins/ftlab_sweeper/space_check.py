"""The search space's keys, checked against the composed config before a study is created or
changed: a key that is no key of the run (``optimizer.lrr``) would be stored in the study as a
searched parameter, leave trial 0 RUNNING with it, and make the corrected command refuse the
study ("created searching optimizer.lrr"). One line naming the closest key instead."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ftlab.errors import FtlabError
from ftlab.options import conf_dir
from ftlab.override_checks import unknown_key

_ABSENT = object()


def check_space_keys(keys: Iterable[str], config: DictConfig) -> None:
    """Every searched or fixed key is a key of ``config`` or one of its config groups; keys
    typed with ``+`` (added on purpose) and Hydra's own are left alone."""
    choices = config.hydra.runtime.choices if "hydra" in config else {}
    for typed in keys:
        if typed.startswith(("+", "~")) or typed.startswith("hydra"):
            continue
        key = typed.split("@")[0]
        if key in choices or (Path(conf_dir()) / key).is_dir():
            continue  # a config group: Hydra checks the options it chooses among
        found = OmegaConf.select(config, key, default=_ABSENT, throw_on_resolution_failure=False)
        if found is _ABSENT:
            raise FtlabError(f"hydra.sweeper.params: {unknown_key(key, config)}")
