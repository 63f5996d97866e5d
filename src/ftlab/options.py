"""The config options that ship with ftlab (``conf/<group>/<option>.yaml``): where they are, and
one read as plain values, for the library parts that name an option (an OOD set's
``config: digits``) without Hydra."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError


def conf_dir() -> str:
    """The ``conf/`` tree: ``$FTLAB_CONFIG_DIR``, else the one inside the installed package
    (``src/ftlab/conf``; the repository's ``conf`` is a link to it)."""
    env = os.environ.get("FTLAB_CONFIG_DIR")
    return str(Path(env) if env else Path(__file__).resolve().parent / "conf")


def named_class(target: Any, base: type) -> type | None:
    """The class a config's ``_target_`` names (a dotted path, or the class itself) when it is
    a subclass of ``base``, else None: a config chooses among ftlab's extension points only."""
    cls = target
    if isinstance(target, str):
        module, _, name = target.rpartition(".")
        try:
            cls = getattr(import_module(module), name) if module else None
        except (ImportError, AttributeError):
            cls = None
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def load_option(group: str, option: str, where: str) -> dict[str, Any]:
    """``conf/<group>/<option>.yaml`` as a dict; ``where`` names the key in errors."""
    import yaml

    folder = Path(conf_dir()) / group
    path = folder / f"{option}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise FtlabError(f"{where}={option} is not a {group} option: use one of {options}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if any("${" in str(v) for v in loaded.values()):
        # Options read here are flat; an interpolation would need the whole composed config.
        raise FtlabError(f"{where}={option}: {path} uses ${{...}}, which only a run resolves")
    return dict(loaded)
