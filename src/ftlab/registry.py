"""One idiom for every extension point: a named table of entries (tasks, adapters, schedules,
exports, data sources, backbone restorers).

A registry maps a config value (``task=multilabel``, ``export=hf``) to code that ftlab ships or
that the user registered in Python. The table lives in code, never in a file a user was sent:
a checkpoint or config can only *name* an entry, and an unknown name is refused in one line
with the closest valid one.

Entries are registered eagerly (an object) or lazily (``"package.module:attr"``), so that a
torch-free module can list what exists (the pre-torch config checks) without importing it::

    TASKS = Registry("task", key="task")
    TASKS.register("classification", "ftlab.tasks.classification:Classification")

    @TASKS.register("my_task")
    class MyTask: ...

    TASKS.get("multilabel")   # the entry, imported on first use
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from ftlab.errors import FtlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, in messages ("task", "export layout").
        key: the config key that names an entry, in messages (``task``, ``export``).
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str | None = None) -> Any:
        """Add ``entry`` (an object, or a lazy ``"module:attr"`` path) under ``name``; without
        ``entry``, a decorator that registers what it decorates. A second entry under one name
        is refused: two packages claiming one config value is a bug, not an override."""

        def add(obj: T | str) -> T | str:
            old = self._entries.get(name)
            if old is not None and old is not obj and not _same_lazy(old, obj):
                raise ValueError(f"{self.kind} {name!r} is registered twice ({old!r}, {obj!r})")
            self._entries[name] = obj
            return obj

        if entry is None:
            return add
        add(entry)
        return entry

    def get(self, name: str) -> T:
        """The entry named ``name`` (imported on first use), or one line naming the valid ones."""
        if name not in self._entries:
            raise FtlabError(self.unknown(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unknown(self, name: Any) -> str:
        """The one-line refusal of an unknown name: the closest valid one first."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {self.key}={close[0]}? " if close else ""
        return f"{self.key}={name} is not a known {self.kind}: {hint}use one of {', '.join(names)}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def _same_lazy(old: Any, new: Any) -> bool:
    """A lazy path and the object it names are one entry (a module re-imported registers
    itself again after the lazy path was resolved)."""
    if isinstance(new, str) or not isinstance(old, str):
        return False
    module, _, attr = old.partition(":")
    return getattr(new, "__module__", None) == module and getattr(new, "__name__", None) == attr
