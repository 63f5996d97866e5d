"""ftlab's tasks: what a run learns (``task=<name>``, conf/task). See :mod:`ftlab.tasks.base`.

:data:`TASKS` maps a ``task.name`` to its class (lazily: listing them imports no torch). A task
of one's own registers itself: ``TASKS.register("my_task", MyTask)`` or
``TASKS.register("my_task", "mypkg.tasks:MyTask")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftlab.errors import FtlabError
from ftlab.registry import Registry

TASKS: Registry[Any] = Registry("task", key="task")
TASKS.register("classification", "ftlab.tasks.classification:Classification")
TASKS.register("multilabel", "ftlab.tasks.multilabel:Multilabel")
TASKS.register("regression", "ftlab.tasks.regression:Regression")
TASKS.register("causal_lm", "ftlab.lm.task:CausalLMTask")  # ftlab.lm (issue 23)


def build_task(config: Mapping[str, Any] | str | None) -> Any:
    """The task of a ``task`` config (plain values: ``{name, <options>}``), a name, or None
    (classification). A record's ``{name, options}`` is read the same way."""
    if config is None:
        config = {"name": "classification"}
    if isinstance(config, str):
        config = {"name": config}
    options = dict(config.get("options") or {}) if "options" in config else dict(config)
    name = options.pop("name", config.get("name", "classification"))
    cls = TASKS.get(str(name))
    try:
        return cls(**options)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise FtlabError(
            f"task={name}: {err}".replace("__init__() ", "") + " (see conf/task)"
        ) from None


__all__ = ["TASKS", "build_task"]
