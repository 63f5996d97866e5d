"""What a run leaves in its directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically: a reader never sees half a file, a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def strip_prefix(metrics: dict[str, float], stage: str, keep: bool = False) -> dict[str, float]:
    """``{"val/acc": x}`` -> ``{"acc": x}`` for the stage's own keys (``keep``: the other keys
    stay as they are, e.g. ``best/val/acc`` -> ``val/acc`` beside them)."""
    prefix = f"{stage}/"
    stripped = {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}
    if keep:
        return {**{k: v for k, v in metrics.items() if not k.startswith(prefix)}, **stripped}
    return stripped
