"""The one registry idiom: lazy and eager entries, one-line refusals with the closest name."""

from __future__ import annotations

import pytest

from ftlab.errors import FtlabError
from ftlab.registry import Registry


def test_lazy_entry_is_imported_on_first_use() -> None:
    table: Registry = Registry("thing", key="thing")
    table.register("join", "os.path:join")
    import os.path

    assert table.get("join") is os.path.join
    assert "join" in table and table.names() == ["join"]


def test_decorator_registers_and_returns_the_object() -> None:
    table: Registry = Registry("task", key="task")

    @table.register("mine")
    class Mine:
        pass

    assert table.get("mine") is Mine


def test_unknown_name_is_one_line_with_the_closest() -> None:
    table: Registry = Registry("task", key="task")
    for name in ("classification", "multilabel", "regression"):
        table.register(name, object())
    with pytest.raises(FtlabError) as err:
        table.get("multilabl")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("task=multilabl is not a known task: did you mean task=multilabel?")
    assert message.endswith("use one of classification, multilabel, regression")


def test_two_entries_under_one_name_are_refused() -> None:
    table: Registry = Registry("task", key="task")
    table.register("a", object())
    with pytest.raises(ValueError, match="registered twice"):
        table.register("a", object())
