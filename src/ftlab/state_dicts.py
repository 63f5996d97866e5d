"""State dicts and refused loads: how one state dict differs from another, and what a
``weights_only`` load that refused a file names. Torch-free, below every loader
(checkpoints, backbone weights, the feature store)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def needs_code(error: Exception) -> str | None:
    """The global (``module.name``) a ``weights_only`` load refused to import, if that is why
    it failed: the file is a pickle that would run code."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    return found.group(1) if found else None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def state_differences(
    state: Mapping[str, Any], expected: Mapping[str, Any], optional: tuple[str, ...] = ()
) -> str:
    """How ``state`` differs from ``expected`` key for key and shape for shape, for a message
    ("2 missing, 0 unexpected and 1 differently shaped keys (e.g. head.weight)"); "" if it fits.
    Expected keys ending in one of ``optional`` may be missing."""
    missing = [k for k in expected if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        k
        for k in state
        if k in expected and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or reshaped):
        return ""
    example = (missing or unexpected or reshaped)[0]
    return (
        f"{len(missing)} missing, {len(unexpected)} unexpected and {len(reshaped)} differently "
        f"shaped keys (e.g. {example})"
    )
