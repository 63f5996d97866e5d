"""What a finished run directory holds, read in one place (exports, distillation, soups).

A run directory, as ``train.py`` leaves it::

    <run>/.hydra/config.yaml      the composed config (Hydra; may hold ${...} interpolations)
    <run>/.hydra/overrides.yaml   the command-line overrides
    <run>/metrics.json            what the run measured (ftlab.train)
    <run>/checkpoints/*.ckpt      best and last checkpoints
    <run>/adapter/                a LoRA / peft adapter in peft's format (ftlab.adapters)
    <run>/<layout>/               an export (``export=<layout>``, ftlab.exports)

Everything is read as plain data (JSON, ``yaml.safe_load``): shown or compared, never run. A file
that is missing or unreadable reads as empty, so a checkpoint copied out of its run still works;
callers that need a file (soups) ask for it with :meth:`RunInfo.resolved`. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftlab.errors import FtlabError

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"


@dataclass
class RunInfo:
    """The run in ``directory``: its metrics, its config and its overrides (plain values)."""

    directory: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, directory: str | Path) -> RunInfo:
        """Read the run in ``directory`` (missing files read as empty)."""
        run = Path(directory).expanduser().resolve()
        info = cls(directory=run)
        info.metrics = _mapping(_read(run / "metrics.json", json.loads))
        info.config = _mapping(_read(run / ".hydra" / "config.yaml", yaml.safe_load))
        overrides = _read(run / ".hydra" / "overrides.yaml", yaml.safe_load)
        info.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        return info

    @classmethod
    def beside(cls, ckpt_path: str | Path) -> RunInfo:
        """The run of ``<run>/checkpoints/<file>.ckpt`` (or of a checkpoint in the run itself)."""
        return cls.of(run_of(ckpt_path))

    @property
    def config_file(self) -> Path:
        return self._dir / ".hydra" / "config.yaml"

    @property
    def adapter_dir(self) -> Path:
        return self._dir / ADAPTER

    def export_dir(self, layout: str) -> Path:
        """Where ``export=<layout>`` of this run's checkpoints goes: ``<run>/<layout>/``."""
        return self._dir / layout

    def data(self, key: str) -> Any:
        """``data.<key>`` of the run's config, or None."""
        data = self.config.get("data")
        return data.get(key) if isinstance(data, Mapping) else None

    def image_size(self) -> tuple[bool, int | None]:
        """``(found, data.image_size)``: found is False without a readable config or with a
        size that is not a plain integer (an unresolved interpolation). A size of None in a
        found config means the backbone's own size."""
        data = self.config.get("data")
        if not isinstance(data, Mapping) or "image_size" not in data:
            return False, None
        size = data["image_size"]
        return (True, size) if size is None or isinstance(size, int) else (False, None)

    def resolved(self, name: str, keys: dict[str, Any]) -> dict[str, Any]:
        """``{key: value}`` of the config's ``keys`` (dotted, with their defaults), resolved by
        OmegaConf; the config is required. ``name`` names the run in the one-line refusal."""
        from omegaconf import OmegaConf  # only soups resolve, at the edge

        file = self.config_file
        if not file.is_file():
            raise FtlabError(f"job {name}: no {file}: soups read the data from a job's config")
        try:
            config = OmegaConf.load(file)
            out: dict[str, Any] = {}
            for key, default in keys.items():
                value = OmegaConf.select(config, key, default=default)
                if OmegaConf.is_config(value):
                    value = OmegaConf.to_container(value, resolve=True)
                out[key] = value
            return out
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FtlabError(f"job {name}: {file} does not resolve ({first})") from None

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise ValueError("RunInfo() without a directory")
        return self.directory


def run_of(ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint: ``<run>`` for ``<run>/checkpoints/<file>.ckpt``, else
    the checkpoint's own folder."""
    parent = Path(ckpt_path).expanduser().resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def _read(path: Path, parse: Any) -> Any:
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
